"""Putting the AR model on its device for a run, and optionally off it afterwards.

Outside ComfyUI this is a plain `.to(device)`. Inside ComfyUI the move is done
through `comfy.model_management` so that ComfyUI frees VRAM held by its own
models first and the AR model can be offloaded to make room for the decoder.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .ar_loading import ARModel
from .runtime import _comfy_module, free_memory_cache, offload_device


def _model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@contextmanager
def ar_on_device(ar: ARModel, offload_after: bool = False) -> Iterator[torch.device]:
    mm = _comfy_module("comfy.model_management")
    if mm is not None and ar.device.type != "cpu":
        mm.free_memory(_model_bytes(ar.model) * 1.2, ar.device)
    if next(ar.model.parameters()).device != ar.device:
        ar.model.to(ar.device)
    try:
        yield ar.device
    finally:
        if offload_after and ar.device.type != "cpu":
            ar.model.to(offload_device())
            free_memory_cache()
