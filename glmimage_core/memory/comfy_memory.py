"""Model memory: ComfyUI's model manager inside ComfyUI, `.to(device)` outside.

Inside ComfyUI each big model is wrapped once in a `comfy.model_patcher.ModelPatcher`
(the way ComfyUI wraps its own text encoders), after its weight-holding layers
became ComfyUI cast layers (`cast_layers.make_castable`). `load_models_gpu`
then puts it on the GPU when a node needs it, with `memory_required` reserved
for the run's activations and KV cache, streams the layers that do not fit
(ComfyUI's lowvram mode), counts it in ComfyUI's VRAM accounting and offloads it
when another model needs the room.

A model that must not stream (the AR model: one forward per token, so a
streamed layer is copied thousands of times per picture) is checked before it
is loaded: when it does not fit in the VRAM ComfyUI can free for it,
`NotEnoughVRAM` says which option would fit, unless the caller allows streaming.

Outside ComfyUI (tests, the command line) the module simply moves to its device.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import GlmImageInputError
from .host import _comfy_module, free_memory_cache, free_vram, offload_device

_PATCHER_ATTR = "_glmimage_patcher"
log = logging.getLogger("GLM-Image")


class NotEnoughVRAM(GlmImageInputError):
    """The model does not fit in the VRAM that can be freed for it, and streaming it was not allowed."""


def comfy_ops():
    """ComfyUI's `comfy.ops` module inside ComfyUI, else None (then nothing is made castable)."""
    return _comfy_module("comfy.ops")


@dataclass
class Residency:
    """How a model may sit on its device during a run.

    `must_fit`: refuse (with `message(free_bytes)`) instead of streaming when the
    weights plus `memory_required` exceed what ComfyUI can free; `max_resident`:
    keep at most that many weight bytes on the device and stream the rest (the
    user's VRAM limit; ComfyUI's own partial unload does it, on any device);
    `pinned` are submodules that must be on the device even when the rest streams
    (their weights are read directly, not through a layer's forward), and buffers
    always follow the model.
    """

    memory_required: int = 0
    must_fit: bool = False
    message: Callable[[int], str] | None = None
    max_resident: int | None = None
    pinned: list[str] = field(default_factory=list)
    #: When streaming is allowed: why even streaming cannot run with `free` bytes, or None (see vram_plan).
    streaming_message: Callable[[int], str | None] | None = None


def patcher_class(disable_dynamic: bool = False):
    """The ModelPatcher class ComfyUI's own loaders build now, for the pack's models to be managed alike.

    `comfy.model_patcher.CoreModelPatcher` where ComfyUI has it (0.12+: main.py sets it to
    ModelPatcherDynamic, dynamic VRAM, the default on NVIDIA, *after* import, hence the lookup per call);
    a legacy ModelPatcher next to dynamic core models makes ComfyUI unload those on every load. Plain
    `ModelPatcher` where there is no CoreModelPatcher (0.3.75), or when ComfyUI asks for a non-dynamic
    copy (`disable_dynamic`, as its own loaders take it).
    """
    model_patcher = _comfy_module("comfy.model_patcher")
    if disable_dynamic:
        return model_patcher.ModelPatcher
    return getattr(model_patcher, "CoreModelPatcher", model_patcher.ModelPatcher)


def new_patcher(module: torch.nn.Module, load_device: torch.device, offload: torch.device,
                disable_dynamic: bool = False):
    """A patcher over `module` made as ComfyUI's own loaders make theirs: `patcher_class()`, after recording
    each weight's dtype (`model_management.archive_model_dtypes`, 0.33+: what the dynamic-VRAM patcher casts
    weights back to when it offloads them; absent on 0.3.75, where nothing reads it)."""
    archive = getattr(_comfy_module("comfy.model_management"), "archive_model_dtypes", None)
    if archive is not None:
        archive(module)
    return patcher_class(disable_dynamic)(module, load_device=load_device, offload_device=offload)


def _patcher(owner: object, module: torch.nn.Module, device: torch.device):
    """The one ModelPatcher of `owner` (created on first use, then reused)."""
    patcher = getattr(owner, _PATCHER_ATTR, None)
    if patcher is None:
        # ModelPatcher records the device on the module it manages; transformers models expose
        # `device` as a read-only property, so it manages a plain container around them.
        holder = torch.nn.ModuleDict({"model": module})
        patcher = new_patcher(holder, device, offload_device())
        setattr(owner, _PATCHER_ATTR, patcher)
    return patcher


def patcher_of(owner: object):
    """`owner`'s ModelPatcher, or None (outside ComfyUI, or before its first run)."""
    return getattr(owner, _PATCHER_ATTR, None)


def adopt(owner: object, patcher) -> None:
    """Make `patcher` (a ComfyUI MODEL's or VAE's own) `owner`'s one patcher, so that every path loads,
    streams and offloads the same weights; a patcher made before gives way (leaves ComfyUI's manager)."""
    if patcher_of(owner) is not patcher:
        forget(owner)
        setattr(owner, _PATCHER_ATTR, patcher)


def _unload(mm, patcher) -> None:
    """Take `patcher`'s model off its device and out of ComfyUI's list of loaded models."""
    for index in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(index)


def _free_for(mm, patcher, device: torch.device, needed: int) -> int:
    """Let ComfyUI unload other models until `needed` bytes are free; returns what is free for this model."""
    try:
        mm.free_memory(needed, device, keep_loaded=[loaded for loaded in mm.current_loaded_models
                                                     if loaded.model is patcher])
    except TypeError:  # a ComfyUI whose free_memory takes other arguments: it frees on load anyway
        pass
    return free_vram(device, patcher) + int(patcher.loaded_size())


def ensure_on_device(owner: object, module: torch.nn.Module, device: torch.device,
                     residency: Residency | None = None) -> None:
    """Make `module` (held by `owner`) ready to compute on `device`."""
    residency = residency or Residency()
    mm = _comfy_module("comfy.model_management")
    if mm is None:
        if next(module.parameters()).device != device:
            module.to(device)
        return
    patcher = _patcher(owner, module, device)
    if device.type != "cpu" and (residency.must_fit or residency.streaming_message is not None):
        reserve = int(mm.extra_reserved_memory())
        needed = patcher.model_size() + residency.memory_required
        free = _free_for(mm, patcher, device, needed + reserve)
        if residency.must_fit and free < needed + reserve and residency.message is not None:
            raise NotEnoughVRAM(residency.message(free))
        refused = residency.streaming_message(free - reserve) if residency.streaming_message else None
        if refused:
            raise NotEnoughVRAM(refused)
    mm.load_models_gpu([patcher], memory_required=residency.memory_required)
    limit_resident(patcher, residency.max_resident)
    if patcher.loaded_size() < patcher.model_size():
        _pin(module, device, residency.pinned)


def limit_resident(patcher, max_resident: int | None) -> None:
    """Stream everything beyond `max_resident` bytes: ComfyUI's own partial unload (its lowvram state)."""
    if max_resident is None:
        return
    excess = int(patcher.loaded_size()) - int(max_resident)
    if excess > 0:
        patcher.partially_unload(patcher.offload_device, excess)


def _pin(module: torch.nn.Module, device: torch.device, pinned: list[str]) -> None:
    """After a partial load: put directly-read submodules and all buffers on the compute device.

    ComfyUI streams only cast layers and moves buffers only on a full load; the
    pinned modules are small (a codebook, a position table, the first parameter
    `generate()` takes its device from) and read without their forward.
    """
    for name in pinned:
        sub = module.get_submodule(name)
        if any(p.device != device for p in sub.parameters()):
            sub.to(device)
    for sub in module.modules():
        for key, buf in sub._buffers.items():
            if buf is not None and buf.device != device:
                sub._buffers[key] = buf.to(device)


def is_streaming(owner: object) -> bool:
    """Whether ComfyUI holds only part of `owner`'s model on the device (the rest streams per forward)."""
    patcher = patcher_of(owner)
    return patcher is not None and patcher.loaded_size() < patcher.model_size()


def release(owner: object, module: torch.nn.Module, device: torch.device) -> None:
    """Move `module` off the GPU now (so the next model has the VRAM)."""
    if device.type == "cpu":
        return
    mm = _comfy_module("comfy.model_management")
    patcher = patcher_of(owner)
    if mm is not None and patcher is not None:
        _unload(mm, patcher)
    else:
        module.to(offload_device())
    free_memory_cache()


def forget(owner: object) -> None:
    """Drop `owner`'s model from ComfyUI's manager (when the pack replaces it with another copy)."""
    mm = _comfy_module("comfy.model_management")
    patcher = patcher_of(owner)
    if mm is None or patcher is None:
        return
    _unload(mm, patcher)
    setattr(owner, _PATCHER_ATTR, None)
    free_memory_cache()


def comfy_loaded_count(owner: object) -> int:
    """How many entries ComfyUI's model manager holds for `owner` (0 outside ComfyUI)."""
    mm = _comfy_module("comfy.model_management")
    patcher = patcher_of(owner)
    if mm is None or patcher is None:
        return 0
    return sum(1 for loaded in mm.current_loaded_models if loaded.model is patcher)
