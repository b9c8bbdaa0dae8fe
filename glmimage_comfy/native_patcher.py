"""The ComfyUI patcher of GLM-Image's DiT MODEL: one per loaded DiT, fresh copies for deep clones, and each
loader's own VRAM limit on top.

The MODEL is what ComfyUI's model manager loads, streams and offloads; the decode
node and KSampler share it, so the same weights are never held twice. What differs
per loader (its `vram_limit_gb`) lives in a clone's wrapper, never on the shared
model. Like ComfyUI's own loaders, it registers a `cached_patcher_init` so that
ComfyUI can build a copy with weights of its own (multi-GPU, training, the
dynamic-VRAM fallback).
"""

from __future__ import annotations

import functools
import logging

import torch

import comfy.model_management
import comfy.patcher_extension

from ..glmimage_core.dit import loading as decoder_loading
from ..glmimage_core.memory import vram_plan
from .comfy_host import adopt, limit_resident, new_patcher, patcher_of
from ..glmimage_core.payloads import DiTModel
from .flow_sampling import glm_shift
from .native_model import GlmImageLatentFormat, GlmImageModel, GlmImageModelConfig

log = logging.getLogger("GLM-Image")


#: The picture size whose shift the loaded MODEL starts with, until "GLM-Image conditioning" sets the right one.
DEFAULT_SIZE_PX = 1024


KV_WRAPPER_KEY = "glm_image_source_kv"


def _clear_source_kv(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: a sampling run builds its source keys/values anew (weights may be patched)."""
    guider = executor.class_obj  # the CFGGuider whose outer_sample this wraps
    model = getattr(getattr(guider, "model_patcher", None), "model", None)
    diffusion = getattr(model, "diffusion_model", None)
    if hasattr(diffusion, "clear_source_kv"):
        diffusion.clear_source_kv()
    try:
        return executor(*args, **kwargs)
    finally:
        if hasattr(diffusion, "clear_source_kv"):
            diffusion.clear_source_kv()


def native_model(dit: DiTModel, preview_factors=None):
    """The ComfyUI `MODEL` (a ModelPatcher over `GlmImageModel`) of a loaded DiT; one per DiT, reused.

    It becomes the DiT's one patcher for the whole pack, so the decode node and
    KSampler load, stream and offload the same weights. It is shared by every
    loader of that DiT, so it carries no per-run option: see `with_vram_limit`.
    """
    patcher = patcher_of(dit.transformer)
    if patcher is None or not isinstance(patcher.model, GlmImageModel):
        patcher = _new_patcher(dit, preview_factors)
        adopt(dit.transformer, patcher)  # a generic patcher made before (plain Python use inside ComfyUI) gives way
    return patcher


def _new_patcher(dit: DiTModel, preview_factors, disable_dynamic: bool = False):
    fmt = GlmImageLatentFormat(dit.latent_stats, preview_factors)
    stored_apart = not dit.weight_dtype.is_default or any(not p.is_floating_point() for p in dit.transformer.parameters())
    config = GlmImageModelConfig(fmt, glm_shift(dit, DEFAULT_SIZE_PX, DEFAULT_SIZE_PX),
                                 dit.dtype if stored_apart else None)  # fp8 or GGUF: cast to the compute dtype
    model = GlmImageModel(config, dit, device=comfy.model_management.get_torch_device())
    patcher = new_patcher(model, dit.device, comfy.model_management.unet_offload_device(), disable_dynamic)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KV_WRAPPER_KEY, _clear_source_kv)
    # What ComfyUI's own loaders register (sd.load_diffusion_model): how to load this MODEL afresh, for
    # clone(force_deepcopy=True), deepclone_multigpu and clone(disable_dynamic=True), which raise without it.
    patcher.cached_patcher_init = (fresh_native_model, (
        dit.path, dit.dtype, str(dit.device), dit.weight_dtype, dict(dit.scheduler_config), dit.latent_stats,
        dit.vae_scale_factor, preview_factors))
    return patcher


def fresh_native_model(path: str, dtype: torch.dtype, device: str, weight_dtype, scheduler_config: dict,
                       latent_stats, vae_scale_factor: int, preview_factors=None, disable_dynamic: bool = False):
    """A MODEL over a DiT loaded anew from `path` (not the pack's cached one): the `cached_patcher_init`
    factory of the pack's MODELs. The copy holds weights of its own and samples exactly what the original
    does; ComfyUI passes `disable_dynamic=True` when it wants a plain (non dynamic-VRAM) patcher. A loader's
    VRAM limit is not an argument: it is a wrapper of the MODEL (`with_vram_limit`), which ComfyUI's clones
    copy onto the fresh copy."""
    dit = decoder_loading.fresh_dit(path, dtype, device, weight_dtype, scheduler_config, latent_stats,
                                    vae_scale_factor)
    # Not entered in the host's table (`adopt`): the copy belongs to the clone that asked for it and goes with it;
    # nothing looks its patcher up by its module.
    return _new_patcher(dit, preview_factors, disable_dynamic)


LIMIT_WRAPPER_KEY = "glm_image_vram_limit"


def with_vram_limit(model_patcher, max_resident: int | None):
    """The MODEL a loader with a VRAM limit hands out: keeps at most `max_resident` bytes of the DiT on the GPU
    while it samples (None: ComfyUI decides, and the MODEL is returned as it is).

    The DiT and its patcher are shared by every loader of the same folder, so the limit must not live on them
    (two loaders with different limits in one graph: the last one would win for both). It lives in a clone's
    SAMPLER_SAMPLE wrapper instead, which ComfyUI copies into every later clone (conditioning, LoRA, patches),
    so each sampler runs with the limit of the loader it is wired to."""
    if max_resident is None:
        return model_patcher
    clone = model_patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, LIMIT_WRAPPER_KEY,
                               functools.partial(_limit_resident, max_resident=int(max_resident)))
    return clone


def _limit_resident(executor, *args, max_resident: int, **kwargs):
    """SAMPLER_SAMPLE wrapper: after ComfyUI loaded the model for this run, stream what exceeds the limit."""
    guider = args[0] if args else None
    patcher = getattr(guider, "model_patcher", None)
    if patcher is not None:
        limit_resident(patcher, max_resident)
        if patcher.loaded_size() < patcher.model_size():  # nothing slow without a word
            log.info("GLM-Image DiT: %s of its %s kept on %s (the loader's vram_limit_gb %s); the rest streams "
                     "from RAM at every step", vram_plan.gb(patcher.loaded_size()), vram_plan.gb(patcher.model_size()),
                     patcher.load_device, vram_plan.gb(max_resident))
    return executor(*args, **kwargs)


__all__ = ["native_model", "fresh_native_model", "with_vram_limit"]
