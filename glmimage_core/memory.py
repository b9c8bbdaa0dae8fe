"""Model memory: ComfyUI's model management when running inside ComfyUI, `.to(device)` outside.

Inside ComfyUI each big model (the AR model, the decoder's DiT + VAE + glyph
encoder) is wrapped once in a `comfy.model_patcher.ModelPatcher`, the way
ComfyUI wraps its own text encoders. `comfy.model_management.load_models_gpu`
then puts it on the GPU when a node needs it, counts it in ComfyUI's VRAM
accounting, and offloads it when another model needs the room. Outside ComfyUI
(tests, the command line) the module simply moves to its device.
"""

from __future__ import annotations

import torch

from .runtime import _comfy_module, free_memory_cache, offload_device

_PATCHER_ATTR = "_glmimage_patcher"


def _patcher(owner: object, module: torch.nn.Module, device: torch.device):
    """The one ModelPatcher of `owner` (created on first use, then reused)."""
    patcher = getattr(owner, _PATCHER_ATTR, None)
    if patcher is None:
        model_patcher = _comfy_module("comfy.model_patcher")
        # ModelPatcher records the device on the module it manages; transformers models expose
        # `device` as a read-only property, so it manages a plain container around them.
        holder = torch.nn.ModuleDict({"model": module})
        patcher = model_patcher.ModelPatcher(holder, load_device=device, offload_device=offload_device())
        setattr(owner, _PATCHER_ATTR, patcher)
    return patcher


def _unload(mm, patcher) -> None:
    """Take `patcher`'s model off its device and out of ComfyUI's list of loaded models."""
    for index in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(index)


def ensure_on_device(owner: object, module: torch.nn.Module, device: torch.device) -> None:
    """Make `module` (held by `owner`) ready to compute on `device`."""
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        # Full load: transformers/diffusers layers are plain torch modules, which ComfyUI's
        # partial (lowvram) loading cannot stream; ComfyUI frees other models to make room.
        mm.load_models_gpu([_patcher(owner, module, device)], force_full_load=True)
        return
    if next(module.parameters()).device != device:
        module.to(device)


def release(owner: object, module: torch.nn.Module, device: torch.device) -> None:
    """Move `module` off the GPU now (so the next model has the VRAM)."""
    if device.type == "cpu":
        return
    mm = _comfy_module("comfy.model_management")
    patcher = getattr(owner, _PATCHER_ATTR, None)
    if mm is not None and patcher is not None:
        _unload(mm, patcher)
    else:
        module.to(offload_device())
    free_memory_cache()


def forget(owner: object) -> None:
    """Drop `owner`'s model from ComfyUI's manager (when the pack replaces it with another copy)."""
    mm = _comfy_module("comfy.model_management")
    patcher = getattr(owner, _PATCHER_ATTR, None)
    if mm is None or patcher is None:
        return
    _unload(mm, patcher)
    setattr(owner, _PATCHER_ATTR, None)
    free_memory_cache()


def comfy_loaded_count(owner: object) -> int:
    """How many entries ComfyUI's model manager holds for `owner` (0 outside ComfyUI)."""
    mm = _comfy_module("comfy.model_management")
    patcher = getattr(owner, _PATCHER_ATTR, None)
    if mm is None or patcher is None:
        return 0
    return sum(1 for loaded in mm.current_loaded_models if loaded.model is patcher)
