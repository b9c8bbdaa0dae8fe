"""The "GLM-Image decode" node inside ComfyUI: the native MODEL + ComfyUI's own sampler + the ComfyUI VAE.

Same conditioning, same sampler code path and same DiT forward as a
KSampler workflow, with GLM-Image's exact schedule (`glm_sigmas`) and Euler,
which is what diffusers' GlmImagePipeline runs, so the pictures match diffusers
(tests/test_native.py). Previews follow ComfyUI's --preview-method through its
own latent_preview callback.
"""

from __future__ import annotations

import torch

import comfy.sample
import comfy.samplers
import latent_preview

from ..glmimage_core.memory import vram_plan
from ..glmimage_core.dit.sampling import glm_timesteps
from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.memory.comfy_memory import patcher_of
from ..glmimage_core.payloads import DecoderBundle, DiTModel, PriorTokens
from ..glmimage_core.memory.host import free_vram
from .token_conditioning import build_conditioning
from .flow_sampling import require_flow_sampling, timestep_scale
from .native_patcher import native_model, with_vram_limit
from .vae import comfy_vae, preview_factors


def glm_sigmas(model_patcher, steps: int) -> torch.Tensor:
    """GLM-Image's schedule for a MODEL (its shift): shifted linspace(1000, 1, steps+1)[:-1] / 1000, then 0.

    ComfyUI's "simple" scheduler gives exactly these at 50 steps; this is exact at any step count. Any flow model
    sampling works (its own timestep scale: 1000 for SD3, 1 for AuraFlow / Flux); others are refused by name."""
    sampling = model_patcher.get_model_object("model_sampling")
    require_flow_sampling(sampling)
    timesteps = torch.from_numpy(glm_timesteps(steps, 1000)) / 1000.0
    return torch.cat([sampling.sigma(timesteps * timestep_scale(sampling)).float(), torch.zeros(1)])


def decode_tiled_if_needed(vae, samples: torch.Tensor) -> torch.Tensor:
    """ComfyUI VAE decode; tiled (ComfyUI's tiler) when one picture would not fit in free VRAM."""
    device = vae.device
    if device.type != "cpu":
        need = vae.memory_used_decode(samples[:1].shape, vae.vae_dtype)
        if need > free_vram(device, vae.patcher) + vae.patcher.loaded_size():
            return vae.decode_tiled(samples)
    return vae.decode(samples)


def decode_vram(bundle: DecoderBundle, prior: PriorTokens, guidance: float) -> str | None:
    """On a GPU: what this decode needs (the note the node shows); refuses what cannot run even streamed."""
    dit = bundle.dit
    if dit.device.type == "cpu":
        return None
    rows = prior.batch_size * (2 if guidance > 1.0 else 1)
    scale = dit.vae_scale_factor
    working = vram_plan.dit_step_bytes(dit.transformer.config, prior.height // scale, prior.width // scale, rows,
                                       act_bytes=dit.dtype.itemsize)
    weights = vram_plan.resident_bytes(dit.inventory, vram_plan.WeightOption(dit.weight_dtype))
    shape = f"{prior.width}x{prior.height} px" + (f", {prior.batch_size} pictures" if prior.batch_size > 1 else "")
    patcher = patcher_of(dit)
    free = free_vram(dit.device, patcher) + (patcher.loaded_size() if patcher else 0)
    refused = vram_plan.streaming_message("GLM-Image's DiT", vram_plan.largest_layer_bytes(dit.transformer),
                                          working, free, shape)
    if refused:
        raise GlmImageInputError(refused)
    vae_bytes = vram_plan.vae_decode_bytes(bundle.vae.config, prior.height // scale, prior.width // scale)
    streamed = " (the rest streams from RAM each step)" if weights + working > free else ""
    return (f"VRAM for this decode at {shape}: DiT {vram_plan.gb(weights)} weights + {vram_plan.gb(working)} per "
            f"step{streamed}; VAE decode {vram_plan.gb(vae_bytes)} (tiled if short).")


def decode_with_comfy(bundle: DecoderBundle, prior: PriorTokens, prompt: str | None, steps: int, guidance: float,
                      seed: int, source_images: list[torch.Tensor] | None = None, max_resident: int | None = None):
    """[N, H, W, 3] pixels: conditioning -> ComfyUI sampler (euler, GLM schedule) -> ComfyUI VAE decode."""
    vae = comfy_vae(bundle.vae_model)
    vae_model = bundle.vae_model  # the preview source holds the VAE only, never the whole bundle
    model = with_vram_limit(native_model(bundle.dit, lambda: preview_factors(vae_model)), max_resident)
    cond = build_conditioning(model, bundle.glyph, prior, prompt, vae, source_images)
    latent = cond.latent["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = glm_sigmas(cond.model, steps)
    callback = latent_preview.prepare_callback(cond.model, steps)
    cfg = guidance if guidance > 1.0 else 1.0  # <= 1 turns guidance off, as in diffusers
    samples = comfy.sample.sample_custom(cond.model, noise, cfg, comfy.samplers.sampler_object("euler"), sigmas,
                                         cond.positive, cond.negative, latent, callback=callback,
                                         disable_pbar=True, seed=seed)
    return decode_tiled_if_needed(vae, samples)


def describe_dit(dit: DiTModel) -> str:
    """What the DiT loaders report: the DiT's bytes on the GPU with its weight_dtype and with the others."""
    return vram_plan.describe_weights("GLM-Image DiT", dit.inventory, vram_plan.WeightOption(dit.weight_dtype),
                                      vram_plan.DIT_OPTIONS, dit.dtype)


def describe_decoder(bundle: DecoderBundle) -> str:
    """What the decoder loader reports: the DiT's bytes on the GPU per option, plus the VAE and glyph encoder."""
    text = describe_dit(bundle.dit)
    others = sum(p.numel() * p.element_size() for m in (bundle.vae, bundle.text_encoder) for p in m.parameters())
    return text + f"; VAE + glyph encoder {vram_plan.gb(others)}"
