"""GLM-Image's VAE as a ComfyUI `VAE`, and latent-to-RGB preview factors fitted from it.

ComfyUI's `comfy.sd.VAE` builds its models from state dicts it recognises; GLM-Image's
16-channel AutoencoderKL is not among them, and rebuilding it in ComfyUI's own VAE
classes would be a second implementation. So the ComfyUI `VAE` object here runs
diffusers' `AutoencoderKL` itself (through `VAEAdapter`, with ComfyUI cast layers),
and everything else is ComfyUI's: `VAE Decode`, `VAE Decode (Tiled)` (its
tiler, with blended overlaps), `VAE Encode`, the OOM fallback to tiling, the
model manager. ComfyUI's own `__init__` sets its defaults from an empty state
dict (its "no VAE weights" early return), so every attribute a given ComfyUI
release reads exists; the model, devices, patcher and memory estimates are then
set here. That early return is not an API: tests/test_native.py compares this
VAE's attributes with those of a VAE ComfyUI really loads, on every ComfyUI the
tests run, so a release that sets more after the return fails a test.
"""

from __future__ import annotations

import logging

import torch

import comfy.model_management
import comfy.sd

from ..glmimage_core.memory import vram_plan
from ..glmimage_core.memory.comfy_memory import adopt, ensure_on_device, new_patcher
from ..glmimage_core.dit.loading import fresh_vae
from ..glmimage_core.payloads import VAEModel

log = logging.getLogger("GLM-Image")


class VAEAdapter(torch.nn.Module):
    """What ComfyUI's VAE calls `first_stage_model`: encode -> latent mode, decode -> pixels in -1..1."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent_dist.mode()

    def decode(self, latents: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class _QuietEmptyInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No VAE weights detected" not in record.getMessage()


class GlmImageVAE(comfy.sd.VAE):
    """A ComfyUI `VAE` running GLM-Image's diffusers AutoencoderKL (raw latents in, pixels out)."""

    def __init__(self, vae_model: VAEModel, disable_dynamic: bool = False) -> None:
        quiet = _QuietEmptyInit()
        logging.getLogger().addFilter(quiet)
        try:
            super().__init__(sd={})  # ComfyUI's defaults for this release; returns before building a model
        finally:
            logging.getLogger().removeFilter(quiet)
        config = vae_model.vae.config
        scale = vae_model.scale_factor
        self.glm_vae = vae_model
        self.first_stage_model = VAEAdapter(vae_model.vae).eval()
        self.latent_channels = int(config.latent_channels)
        self.downscale_ratio = self.upscale_ratio = scale
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.memory_used_decode = lambda shape, dtype: vram_plan.vae_decode_bytes(
            config, shape[-2], shape[-1], comfy.model_management.dtype_size(dtype)) * shape[0]
        self.memory_used_encode = lambda shape, dtype: vram_plan.vae_decode_bytes(
            config, shape[-2] // scale, shape[-1] // scale, comfy.model_management.dtype_size(dtype)) * shape[0]
        self.device = vae_model.device
        self.vae_dtype = vae_model.dtype
        self.output_device = comfy.model_management.intermediate_device()
        self.patcher = new_patcher(self.first_stage_model, self.device, comfy.model_management.vae_offload_device(),
                                   disable_dynamic)
        # As ComfyUI's VAELoader registers it: how to load this VAE afresh (deep clones, Select VAE Device).
        self.patcher.cached_patcher_init = (fresh_vae_patcher, (vae_model.path, vae_model.dtype,
                                                                str(vae_model.device)))
        self.size = None
        self.model_size()


def comfy_vae(vae_model: VAEModel) -> GlmImageVAE:
    """The ComfyUI `VAE` of a loaded GLM-Image VAE; one per VAE, and its patcher is the VAE's one patcher."""
    vae = getattr(vae_model, "_glmimage_comfy_vae", None)
    if vae is None:
        vae = GlmImageVAE(vae_model)
        vae_model._glmimage_comfy_vae = vae
        adopt(vae_model, vae.patcher)  # a generic patcher made before gives way
    return vae


def fresh_vae_patcher(path: str, dtype: torch.dtype, device: str, disable_dynamic: bool = False):
    """The patcher of a GLM-Image VAE loaded anew from `path` (not the pack's cached one): the
    `cached_patcher_init` factory of the pack's VAEs. Its model is the new VAE's `first_stage_model`
    (what ComfyUI's Select VAE Device puts back on the VAE), with weights of its own."""
    return GlmImageVAE(fresh_vae(path, dtype, device), disable_dynamic).patcher


def preview_factors(vae_model: VAEModel, pictures: int = 12, size: int = 128, seed: int = 0):
    """Latent-to-RGB factors for previews, fitted by least squares from the VAE itself.

    GLM-Image publishes no preview factors. Pictures of random colour blocks
    (so flat colours and edges are both there) are encoded; their normalised
    latents are regressed onto the pictures' colours (in -1..1, averaged over
    each latent pixel). Returns (factors [C][3], bias [3]) as ComfyUI's
    Latent2RGB previewer takes them; costs one small VAE encode.
    """
    scale = vae_model.scale_factor
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(pictures, 3, size // 16, size // 16, generator=g)
    images = torch.nn.functional.interpolate(blocks, size=(size, size), mode="nearest") * 2 - 1
    ensure_on_device(vae_model, vae_model.vae, vae_model.device)
    with torch.inference_mode():
        raw = vae_model.vae.encode(images.to(vae_model.device, vae_model.dtype)).latent_dist.mode().float().cpu()
    return fit_rgb_factors(vae_model.latent_stats.normalise(raw), torch.nn.functional.avg_pool2d(images, scale))


def fit_rgb_factors(latents: torch.Tensor, colours: torch.Tensor) -> tuple[list, list]:
    """Least-squares affine map from latent channels to RGB: [N,C,h,w] latents, [N,3,h,w] colours in -1..1
    -> (factors [C][3], bias [3])."""
    features = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    targets = colours.permute(0, 2, 3, 1).reshape(-1, 3).double()
    design = torch.cat([features, torch.ones(features.shape[0], 1, dtype=torch.float64)], dim=1)
    solution = torch.linalg.lstsq(design, targets).solution.float()
    return solution[:-1].tolist(), solution[-1].tolist()
