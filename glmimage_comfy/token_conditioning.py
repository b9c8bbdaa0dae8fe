"""GLM-Image tokens -> ComfyUI `CONDITIONING` (+ the MODEL's schedule for their size, + an empty LATENT).

Positive: the prompt's glyph embeddings (its quoted text through ByT5), the
tokens' d16 prior ids, kept. Negative: GLM-Image's unguided branch, the empty
text's glyph embeddings and the same ids, dropped. For image-to-image both
carry the source images (raw VAE latents + their d16 ids); the positive rows
read them through the DiT's keys/values, the negative rows do not. The checks
are the decode node's own (glmimage_core.dit.decoder_inputs.validate).

The MODEL output gets GLM-Image's shift for the tokens' size, unless a stock
flow model-sampling node (ModelSamplingSD3 / AuraFlow / Flux) was placed before
the conditioning node: that explicit choice is kept (and said). Non-flow model
sampling is refused here, with the node named.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..glmimage_core.dit.decoder_inputs import validate
from ..glmimage_core.dit.sampling import encode_glyphs
from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.images import source_pixels
from ..glmimage_core.payloads import DiTModel, GlyphEncoder, PriorTokens, d16_ids
from .flow_sampling import (GlmImageModelSampling, glm_shift, linear_shift_of, require_flow_sampling,
                            sampling_node_name, with_shift_for)
from .native_model import GlmImageModel, SourceImages


@dataclass
class GlmConditioning:
    model: object  # ModelPatcher with GLM-Image's shift for the tokens' size
    positive: list
    negative: list
    latent: dict  # ComfyUI LATENT: zeros of the tokens' size, one per grid
    note: str | None = None  # for the user: a model-sampling node's schedule was kept


def dit_of(model_patcher) -> DiTModel:
    """The DiT behind a ComfyUI MODEL, or a message naming the input when it is another model."""
    model = getattr(model_patcher, "model", None)
    if not isinstance(model, GlmImageModel):
        raise GlmImageInputError(f"model: a {type(model).__name__} is connected; GLM-Image tokens condition GLM-Image's "
                                 "own DiT: connect 'Load GLM-Image DiT' (or its LoRA/patched versions)")
    return model.dit


def build_conditioning(model_patcher, glyph: GlyphEncoder, prior: PriorTokens, prompt: str | None = None,
                       vae=None, source_images: list[torch.Tensor] | None = None) -> GlmConditioning:
    """Everything a stock sampler needs to render `prior` with the GLM-Image MODEL `model_patcher`."""
    dit = dit_of(model_patcher)
    inputs = validate(dit, prior, prompt, 1, 1.0, source_images or None)
    if glyph.embed_dim != dit.transformer.config.text_embed_dim:
        raise GlmImageInputError(f"glyph_encoder gives embeddings of size {glyph.embed_dim} but the DiT expects "
                                 f"{dit.transformer.config.text_embed_dim}: use the glyph encoder of the same release")
    with glyph.lock, torch.inference_mode():
        positive = encode_glyphs(glyph, inputs.prompt, glyph.device, torch.float32).cpu()
        negative = encode_glyphs(glyph, "", glyph.device, torch.float32).cpu()
    batch = inputs.grids.shape[0]
    ids = d16_ids(inputs.grids)
    keep = torch.zeros(batch, 1, dtype=torch.long)
    common = {"glm_prior_ids": ids, "glm_size": (inputs.height, inputs.width)}  # size: for latent checks
    if inputs.source_grids:
        if vae is None:
            raise GlmImageInputError("vae: image-to-image tokens need the VAE to read their source images; connect "
                                     "'Load GLM-Image VAE' to the conditioning node's vae input")
        sources = SourceImages(latents=[_encode(vae, image, grid) for image, grid in
                                        zip(inputs.sources, inputs.source_grids)],
                               ids=[d16_ids(g) for g in inputs.source_grids])
        common["glm_sources"] = sources
    pos = [[positive, {**common, "glm_prior_drop": keep, "glm_read_sources": 1 - keep}]]
    neg = [[negative, {**common, "glm_prior_drop": 1 - keep, "glm_read_sources": keep}]]
    scale = dit.vae_scale_factor
    latent = torch.zeros(batch, dit.latent_channels, inputs.height // scale, inputs.width // scale)
    model, note = _scheduled(model_patcher, dit, inputs.height, inputs.width)
    return GlmConditioning(model=model, positive=pos, negative=neg, latent={"samples": latent}, note=note)


def _scheduled(model_patcher, dit: DiTModel, height: int, width: int):
    """(MODEL, note): GLM-Image's shift for the size in place of the pack's own default; a stock flow
    model-sampling node's schedule kept as the user placed it; anything else refused with its node named."""
    sampling = model_patcher.get_model_object("model_sampling")
    if isinstance(sampling, GlmImageModelSampling):
        return with_shift_for(model_patcher, height, width), None
    require_flow_sampling(sampling)
    mu = glm_shift(dit, height, width)
    theirs = linear_shift_of(sampling)
    shift = f" (linear shift {theirs:.4g})" if theirs is not None else ""
    return model_patcher, (f"model: keeping the schedule of {sampling_node_name(sampling)}{shift} placed before this "
                           f"node; GLM-Image's own for {width}x{height} px is shift {mu:.4g} (remove that node to "
                           "use it)")


def _encode(vae, image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """One source image at 32 px per source token, through the ComfyUI VAE: raw latents [1, C, h, w] on the CPU."""
    # The denoising steps' source pixels (images.source_pixels), in ComfyUI's IMAGE layout: the VAE maps 0..1
    # to -1..1 itself.
    pixels = source_pixels(image, grid).unsqueeze(0)
    return vae.encode(pixels).float().cpu()
