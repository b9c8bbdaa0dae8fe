"""ComfyUI as the engine's host (glmimage_core.memory.host): its model manager, cast layers, progress bar,
cancel button, folders and devices.

Each big model is wrapped once in a ComfyUI `ModelPatcher` (the way ComfyUI wraps
its own text encoders), after its weight-holding layers became ComfyUI cast
layers (`cast_ops`, see glmimage_core.weights.cast_layers). `load_models_gpu`
then puts it on the GPU when a node needs it, with `memory_required` reserved
for the run's activations and KV cache, streams the layers that do not fit
(ComfyUI's lowvram mode), counts it in ComfyUI's VRAM accounting and offloads
it when another model needs the room. The DiT's and the VAE's patchers are
those of their native MODEL and VAE (native_patcher.py, vae.py: `adopt`), so
every path loads, streams and offloads the same weights.

The patchers live here, in a table keyed by the model's module; the engine's
payloads carry none. `install()` makes this the engine's host; the pack's entry
point (__init__.py) calls it.
"""

from __future__ import annotations

import os
import weakref

import torch

import comfy.cli_args
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import folder_paths

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.memory.host import CastOps, Room, install_host
from ..glmimage_core.weights.model_folders import FOLDER_NAME

#: module -> its one ModelPatcher. A patcher holds its module, so an entry lives until `forget`: the model caches
#: call it when they drop a model (and so does a benchmark that prepared one itself); the fresh copies ComfyUI's
#: deep clones make (native_patcher.fresh_native_model, vae.fresh_vae_patcher) are owned by their clone and
#: never entered here.
_PATCHERS: "weakref.WeakKeyDictionary[torch.nn.Module, object]" = weakref.WeakKeyDictionary()
#: module -> {(adapter ids, strengths): (the patches, a clone of its patcher carrying them)}: the AR LoRAs'
#: patchers (`place(..., patches=...)`), made once per combination; ComfyUI swaps the patched weights in and
#: out when it loads one clone after another, so the module's own weights stay the base.
_PATCHED: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
#: module -> ComfyUI objects made for it (its ComfyUI VAE), dropped with it by `forget`.
_COMPANIONS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def register_comfy_folder() -> None:
    """Add `models/glm_image` to ComfyUI's folder_paths (idempotent)."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    os.makedirs(default, exist_ok=True)
    if FOLDER_NAME not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[FOLDER_NAME] = ([default], set())
    elif default not in folder_paths.folder_names_and_paths[FOLDER_NAME][0]:
        folder_paths.add_model_folder_path(FOLDER_NAME, default)


def patcher_class(disable_dynamic: bool = False):
    """The ModelPatcher class ComfyUI's own loaders build now, for the pack's models to be managed alike.

    `comfy.model_patcher.CoreModelPatcher` where ComfyUI has it (0.12+: main.py sets it to
    ModelPatcherDynamic, dynamic VRAM, the default on NVIDIA, *after* import, hence the lookup per call);
    a legacy ModelPatcher next to dynamic core models makes ComfyUI unload those on every load. Plain
    `ModelPatcher` where there is no CoreModelPatcher (0.3.75), or when ComfyUI asks for a non-dynamic
    copy (`disable_dynamic`, as its own loaders take it).
    """
    if disable_dynamic:
        return comfy.model_patcher.ModelPatcher
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def new_patcher(module: torch.nn.Module, load_device: torch.device, offload: torch.device,
                disable_dynamic: bool = False):
    """A patcher over `module` made as ComfyUI's own loaders make theirs: `patcher_class()`, after recording
    each weight's dtype (`model_management.archive_model_dtypes`, 0.33+: what the dynamic-VRAM patcher casts
    weights back to when it offloads them; absent on 0.3.75, where nothing reads it)."""
    archive = getattr(mm, "archive_model_dtypes", None)
    if archive is not None:
        archive(module)
    return patcher_class(disable_dynamic)(module, load_device=load_device, offload_device=offload)


def patcher_of(module: torch.nn.Module | None):
    """`module`'s ModelPatcher, or None (before its first run)."""
    return None if module is None else _PATCHERS.get(module)


def adopt(module: torch.nn.Module, patcher) -> None:
    """Make `patcher` (a ComfyUI MODEL's or VAE's own) `module`'s one patcher, so that every path loads,
    streams and offloads the same weights; a patcher made before gives way (leaves ComfyUI's manager)."""
    old = _PATCHERS.get(module)
    if old is not patcher:
        if old is not None:
            _unload(old)
        _PATCHERS[module] = patcher


def patchers_of(module: torch.nn.Module) -> list:
    """`module`'s patcher and the patched clones made from it (AR LoRAs)."""
    base = _PATCHERS.get(module)
    clones = [clone for _, clone in _PATCHED.get(module, {}).values()]
    return ([base] if base is not None else []) + clones


def loaded_patcher(module: torch.nn.Module):
    """The patcher of `module` that ComfyUI holds loaded now (the base or a patched clone), else the base."""
    mine = patchers_of(module)
    for loaded in mm.current_loaded_models:
        if any(loaded.model is patcher for patcher in mine):
            return loaded.model
    return _PATCHERS.get(module)


def _patched(module: torch.nn.Module, base, patches: tuple):
    """A clone of `base` carrying `patches` ((ARLora, strength) pairs) as ComfyUI LoRA patches, made once."""
    from .ar_lora_patches import comfy_patches

    key = tuple((id(adapter), float(strength)) for adapter, strength in patches)
    table = _PATCHED.setdefault(module, {})
    if key not in table:
        clone = base.clone()
        for adapter, strength in patches:
            wanted = comfy_patches(adapter)
            added = clone.add_patches(wanted, strength)
            if len(added) != len(wanted):
                missing = sorted(set(wanted) - set(added))
                raise GlmImageInputError(f"lora_name: {adapter.source!r}: ComfyUI could not patch {missing[:3]} of "
                                         "the AR model (a layer it does not manage)")
        table[key] = (patches, clone)  # the patches stay referenced, so their ids stay theirs
    return table[key][1]


def companions(module: torch.nn.Module) -> dict:
    """ComfyUI objects made once for `module` (e.g. its ComfyUI VAE); `forget` drops them with it."""
    return _COMPANIONS.setdefault(module, {})


def loaded_count(module: torch.nn.Module) -> int:
    """How many entries ComfyUI's model manager holds for `module`."""
    patcher = patcher_of(module)
    return 0 if patcher is None else sum(1 for loaded in mm.current_loaded_models if loaded.model is patcher)


def free_vram(device: torch.device, patcher=None) -> int | None:
    """Bytes ComfyUI can give on `device` for new tensors, or None for the CPU (RAM counts as plenty):
    `patcher.get_free_memory(device)` where the patcher has it (0.33+: it also counts the VRAM that
    dynamic-VRAM models hand back, which `model_management.get_free_memory` leaves out), else
    `model_management.get_free_memory`."""
    if device.type == "cpu":
        return None
    own = getattr(patcher, "get_free_memory", None)
    return int(own(device) if callable(own) else mm.get_free_memory(device))


def limit_resident(patcher, max_resident: int | None) -> None:
    """Stream everything beyond `max_resident` bytes: ComfyUI's own partial unload (its lowvram state)."""
    if max_resident is None:
        return
    excess = int(patcher.loaded_size()) - int(max_resident)
    if excess > 0:
        patcher.partially_unload(patcher.offload_device, excess)


def _unload(patcher) -> None:
    """Take `patcher`'s model off its device and out of ComfyUI's list of loaded models."""
    for index in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[index]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(index)


def _pin(module: torch.nn.Module, device: torch.device, pinned) -> None:
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


class ComfyHost:
    """The engine's host inside ComfyUI (glmimage_core.memory.host.Host)."""

    cast_ops = CastOps(comfy.ops.disable_weight_init, comfy.ops.manual_cast)

    # devices
    def compute_device(self, choice: str) -> torch.device:
        return mm.get_torch_device()

    def offload_device(self) -> torch.device:
        return mm.unet_offload_device()

    def park_device(self, device: torch.device) -> torch.device:
        return mm.unet_offload_device()  # the model manager moves it when a run needs it

    # placement
    def _patcher(self, module: torch.nn.Module, device: torch.device):
        """`module`'s one ModelPatcher (created on first use, then reused)."""
        patcher = _PATCHERS.get(module)
        if patcher is None:
            # ModelPatcher records the device on the module it manages; transformers models expose
            # `device` as a read-only property, so it manages a plain container around them.
            patcher = new_patcher(torch.nn.ModuleDict({"model": module}), device, mm.unet_offload_device())
            _PATCHERS[module] = patcher
        return patcher

    def make_room(self, module: torch.nn.Module, device: torch.device, memory_required: int) -> Room:
        """Let ComfyUI unload other models until this one and its run fit; what is then free for it."""
        patcher = self._patcher(module, device)
        reserve = int(mm.extra_reserved_memory())
        needed = int(patcher.model_size()) + memory_required
        try:
            mine = patchers_of(module)
            mm.free_memory(needed + reserve, device, keep_loaded=[loaded for loaded in mm.current_loaded_models
                                                                  if any(loaded.model is p for p in mine)])
        except TypeError:  # a ComfyUI whose free_memory takes other arguments: it frees on load anyway
            pass
        return Room(free=free_vram(device, patcher) + int(patcher.loaded_size()), reserve=reserve, needed=needed)

    def place(self, module, device, memory_required=0, max_resident=None, pinned=(), patches=()) -> None:
        patcher = self._patcher(module, device)
        if patches:
            patcher = _patched(module, patcher, tuple(patches))
        mm.load_models_gpu([patcher], memory_required=memory_required)
        limit_resident(patcher, max_resident)
        if patcher.loaded_size() < patcher.model_size():
            _pin(module, device, pinned)

    def is_streaming(self, module) -> bool:
        patcher = loaded_patcher(module)
        return patcher is not None and patcher.loaded_size() < patcher.model_size()

    def release(self, module, device) -> None:
        mine = patchers_of(module)
        for patcher in mine:
            _unload(patcher)
        if not mine:
            module.to(mm.unet_offload_device())
        mm.soft_empty_cache()

    def forget(self, module) -> None:
        _COMPANIONS.pop(module, None)
        mine = patchers_of(module)
        _PATCHED.pop(module, None)
        _PATCHERS.pop(module, None)
        for patcher in mine:
            _unload(patcher)
        if mine:
            mm.soft_empty_cache()

    def free_memory(self, device, module=None) -> int | None:
        return free_vram(device, patcher_of(module))

    def empty_cache(self) -> None:
        mm.soft_empty_cache()

    # a run
    def check_interrupted(self) -> None:
        """ComfyUI's cancel button (a flag under a lock): raises its InterruptProcessingException."""
        mm.throw_exception_if_processing_interrupted()

    def progress_bar(self, total: int):
        return comfy.utils.ProgressBar(total)

    def preview_size(self, default: int = 512) -> int:
        """ComfyUI's `--preview-size` (512 unless set)."""
        size = getattr(getattr(comfy.cli_args, "args", None), "preview_size", None)
        return int(size) if isinstance(size, int) and size > 0 else default

    # folders
    def model_folders(self, name: str) -> list[str]:
        """ComfyUI's folders of kind `name` (none for a kind this ComfyUI does not know)."""
        if name == FOLDER_NAME:
            register_comfy_folder()
        try:
            return list(folder_paths.get_folder_paths(name))
        except KeyError:
            return []

    def token_folders(self) -> dict[str, str]:
        return {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory(),
                "temp": folder_paths.get_temp_directory()}


_INSTALLED: ComfyHost | None = None


def install() -> ComfyHost:
    """Make ComfyUI the engine's host (once; later calls return the same host) and register models/glm_image."""
    global _INSTALLED
    register_comfy_folder()
    if _INSTALLED is None:
        _INSTALLED = ComfyHost()
    install_host(_INSTALLED)
    return _INSTALLED
