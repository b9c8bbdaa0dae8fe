"""Putting the AR model on its device for a run, and optionally off it afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .ar_loading import ARModel
from .memory import ensure_on_device, release


@contextmanager
def ar_on_device(ar: ARModel, offload_after: bool = False) -> Iterator[torch.device]:
    if ar.quantization != "none":  # bitsandbytes weights live where they were loaded
        yield ar.device
        return
    ensure_on_device(ar, ar.model, ar.device)
    try:
        yield ar.device
    finally:
        if offload_after:
            release(ar, ar.model, ar.device)
