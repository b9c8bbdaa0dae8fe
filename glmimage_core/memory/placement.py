"""Putting a model on its device for a run: the engine's rules, the host's moves.

Inside ComfyUI the host's model manager loads a model when a run needs it, with
`memory_required` reserved for the run's activations and KV cache, streams the
layers that do not fit and offloads it when another model needs the room; in
plain Python the host simply moves it (memory.host).

A model that must not stream (the AR model: one forward per token, so a
streamed layer is copied thousands of times per picture) is checked here before
it is placed: when it does not fit in the memory the host can free for it,
`NotEnoughVRAM` says which option would fit, unless the caller allows streaming.
Hosts that keep no accounting (plain Python) are not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import GlmImageInputError
from .host import host


class NotEnoughVRAM(GlmImageInputError):
    """The model does not fit in the VRAM that can be freed for it, and streaming it was not allowed."""


@dataclass
class Residency:
    """How a model may sit on its device during a run.

    `must_fit`: refuse (with `message(free_bytes)`) instead of streaming when the
    weights plus `memory_required` exceed what the host can free; `max_resident`:
    keep at most that many weight bytes on the device and stream the rest (the
    user's VRAM limit); `pinned` are submodules that must be on the device even
    when the rest streams (their weights are read directly, not through a layer's
    forward), and buffers always follow the model.
    """

    memory_required: int = 0
    must_fit: bool = False
    message: Callable[[int], str] | None = None
    max_resident: int | None = None
    pinned: list[str] = field(default_factory=list)
    #: When streaming is allowed: why even streaming cannot run with `free` bytes, or None (see vram_plan).
    streaming_message: Callable[[int], str | None] | None = None
    #: (adapter, strength) pairs the host applies to the weights while the model is placed (AR LoRAs).
    patches: tuple = ()


def ensure_on_device(module: torch.nn.Module, device: torch.device, residency: Residency | None = None) -> None:
    """Make `module` ready to compute on `device`, after checking that it may sit there as `residency` says."""
    residency = residency or Residency()
    the_host = host()
    if device.type != "cpu" and (residency.must_fit or residency.streaming_message is not None):
        room = the_host.make_room(module, device, residency.memory_required)
        if room is not None:
            if residency.must_fit and room.free < room.needed + room.reserve and residency.message is not None:
                raise NotEnoughVRAM(residency.message(room.free))
            refused = residency.streaming_message(room.free - room.reserve) if residency.streaming_message else None
            if refused:
                raise NotEnoughVRAM(refused)
    the_host.place(module, device, residency.memory_required, residency.max_resident, residency.pinned,
                   residency.patches)


def is_streaming(module: torch.nn.Module) -> bool:
    """Whether the host holds only part of `module` on its device (the rest streams per forward)."""
    return host().is_streaming(module)


def release(module: torch.nn.Module, device: torch.device) -> None:
    """Move `module` off its device now (so the next model has the VRAM)."""
    if device.type != "cpu":
        host().release(module, device)


def forget(module: torch.nn.Module) -> None:
    """The engine drops `module` (a cache replaced it): the host lets go of it too."""
    host().forget(module)
