"""GLM-Image's DiT as a native ComfyUI `MODEL`: what KSampler, LoRA loaders and model patches work on.

- `GlmImageModel` is a `comfy.model_base.BaseModel` whose diffusion model is
  diffusers' `GlmImageTransformer2DModel` (with ComfyUI cast layers, see
  glmimage_core.weights.cast_layers) behind `GlmImageDiffusionModel`, a thin adapter from
  ComfyUI's call convention to the pack's one DiT forward (glmimage_core.dit.forward).
- Sampling is flow matching (flow_sampling.py): `process_timestep` maps the noise
  level back to the timestep the DiT was trained on, so any ComfyUI sampler,
  scheduler and flow model-sampling node works, and others are refused by name.
- Latents are normalised per channel (`GlmImageLatentFormat` through the engine's
  `LatentStats`: the VAE config's latents_mean / latents_std), so stock `VAE Decode` gets raw VAE latents, and
  the latent-to-RGB preview factors are fitted from the VAE itself on first use.
- Conditioning (see conditioning.py) carries the prior tokens, glyph embeddings
  and, for image-to-image, the source images; each row of a batch knows whether
  it keeps or drops the tokens and whether it reads the sources, so ComfyUI may
  batch the positive and negative conditioning into one forward.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.supported_models_base
import comfy.utils

from ..glmimage_core.dit.fit import latent_step_bytes
from ..glmimage_core.dit.forward import SourceKV, pad_glyphs, velocity
from ..glmimage_core.dit.latents import source_kv
from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.payloads import DiTModel, LatentStats
from .flow_sampling import dit_timestep_for, model_sampling_for

log = logging.getLogger("GLM-Image")


# --------------------------------------------------------------------------- latent format


class GlmImageLatentFormat(comfy.latent_formats.LatentFormat):
    """Per-channel mean/std normalisation; preview factors fitted from the VAE the first time they are read."""

    latent_dimensions = 2

    def __init__(self, stats: LatentStats, preview_factors=None) -> None:
        self.latent_channels = stats.channels
        self.stats = stats
        self._preview_source = preview_factors  # () -> (factors [C][3], bias [3]) or None
        self._preview: tuple | None = None

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.stats.normalise(latent)

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.stats.denormalise(latent)

    def _preview_factors(self) -> tuple | None:
        if self._preview is None and self._preview_source is not None:
            try:
                self._preview = self._preview_source()
            except Exception as err:  # a preview must never stop a render
                log.warning("GLM-Image: no latent previews (%s)", err)
                self._preview_source = None
        return self._preview

    @property
    def latent_rgb_factors(self):
        factors = self._preview_factors()
        return None if factors is None else factors[0]

    @property
    def latent_rgb_factors_bias(self):
        factors = self._preview_factors()
        return None if factors is None else factors[1]


# --------------------------------------------------------------------------- model config


class GlmImageModelConfig(comfy.supported_models_base.BASE):
    """What ComfyUI's BaseModel reads from a model config; the DiT itself is built by diffusers."""

    unet_config = {"disable_unet_model_creation": True}
    unet_extra_config: dict = {}
    sampling_settings = {"shift": 1.0, "multiplier": 1000}
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]

    def __init__(self, latent_format: GlmImageLatentFormat, shift: float, manual_cast_dtype: torch.dtype | None):
        super().__init__(dict(self.unet_config))
        self.latent_format = latent_format
        self.sampling_settings = {"shift": shift, "multiplier": 1000}
        self.manual_cast_dtype = manual_cast_dtype


# --------------------------------------------------------------------------- conditioning payload


@dataclass(eq=False)
class SourceImages:
    """Image-to-image sources as conditioning carries them: raw VAE latents and their d16 prior ids."""

    latents: list[torch.Tensor]  # [1, C, h, w] raw (un-normalised) VAE latents, CPU
    ids: list[torch.Tensor]  # [1, S] d16 ids, CPU

    def __eq__(self, other) -> bool:  # ComfyUI batches rows whose constant conds are equal
        return self is other

    __hash__ = object.__hash__


class GlyphCond(comfy.conds.CONDRegular):
    """Glyph embeddings [B, L, D]: rows of different lengths batch together, zero padded (and masked by
    the `glyph_lengths` cond), instead of CONDCrossAttn's repetition, which would change GLM's attention."""

    def can_concat(self, other) -> bool:
        s1, s2 = self.cond.shape, other.cond.shape
        return s1[0] == s2[0] and s1[2] == s2[2] and self.cond.device == other.cond.device

    def concat(self, others):
        return pad_glyphs([self.cond] + [o.cond for o in others])[0]


# --------------------------------------------------------------------------- the model


class GlmImageDiffusionModel(torch.nn.Module):
    """ComfyUI's `diffusion_model(x, t, context=..., **conds)` -> glmimage_core.dit.forward.velocity.

    Holds diffusers' DiT as `transformer` (so LoRA keys `transformer.*` map onto
    `diffusion_model.transformer.*`) and the source images' keys/values of the
    current sampling run (built by the first forward that needs them, cleared
    around every run by an OUTER_SAMPLE wrapper).
    """

    def __init__(self, dit: DiTModel) -> None:
        super().__init__()
        self.transformer = dit.transformer
        self.pixel_scale = dit.vae_scale_factor
        self.latent_stats = dit.latent_stats
        self.compute_dtype = dit.dtype
        self._source_kv: dict[int, tuple[SourceImages, SourceKV]] = {}

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of the block weights (fp8 with weight_dtype fp8), as ComfyUI's own models report;
        the compute dtype when they are GGUF blocks (bytes that ComfyUI-GGUF's layers dequantise)."""
        weight = self.transformer.transformer_blocks[0].ff.net[2].weight
        return weight.dtype if weight.is_floating_point() else self.compute_dtype

    def clear_source_kv(self) -> None:
        self._source_kv.clear()

    def _kv_for(self, sources: SourceImages, dtype: torch.dtype, device: torch.device) -> SourceKV:
        entry = self._source_kv.get(id(sources))
        if entry is None or entry[0] is not sources:
            kv = source_kv(self.transformer, sources.latents, sources.ids, self.latent_stats, self.pixel_scale,
                           device, dtype)
            self._source_kv[id(sources)] = entry = (sources, kv)
        return entry[1]

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context=None, control=None, transformer_options={},
                glm_glyphs=None, glm_glyph_lengths=None, glm_prior_ids=None, glm_prior_drop=None,
                glm_sources=None, glm_read_sources=None, **kwargs) -> torch.Tensor:
        if glm_prior_ids is None or glm_glyphs is None:
            raise GlmImageInputError("the conditioning does not come from 'GLM-Image conditioning': connect its "
                                     "positive and negative outputs to the sampler")
        kv = self._kv_for(glm_sources, x.dtype, x.device) if glm_sources is not None else None
        return velocity(self.transformer, x, timesteps.float(), glm_glyphs.to(x.dtype), glm_prior_ids,
                        glm_prior_drop.reshape(-1) > 0, self.pixel_scale,
                        glyph_lengths=glm_glyph_lengths.reshape(-1), source_kv=kv,
                        read_sources=None if kv is None else glm_read_sources.reshape(-1) > 0)


class GlmImageModel(comfy.model_base.BaseModel):
    """GLM-Image's DiT as ComfyUI's BaseModel (flow matching, normalised 16-channel latents)."""

    def __init__(self, model_config: GlmImageModelConfig, dit: DiTModel, device=None) -> None:
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device)
        # the pack's own class, so the conditioning node knows its default from a stock node's patch
        self.model_sampling = model_sampling_for(model_config, float(model_config.sampling_settings["shift"]))
        self.diffusion_model = GlmImageDiffusionModel(dit)
        self.dit = dit

    def get_dtype(self) -> torch.dtype:
        return self.diffusion_model.dtype

    def process_timestep(self, timestep, x, **kwargs):
        """ComfyUI passes `model_sampling.timestep(sigma)`; the DiT wants the timestep it was trained on for that
        noise level: sigma unshifted by GLM-Image's mu for the latent's size, * 1000, - 1.

        The noise level is recovered with the sampling's own timestep scale (1000 for SD3 and the pack's, 1 for
        AuraFlow and Flux), never from its shift: a model-sampling node changes which noise levels are visited,
        not what the DiT is told a noise level means."""
        return dit_timestep_for(self.model_sampling, timestep, x, self.dit)

    def extra_conds(self, **kwargs) -> dict:
        prior_ids = kwargs.get("glm_prior_ids")
        glyphs = kwargs.get("cross_attn")
        if prior_ids is None or glyphs is None:
            raise GlmImageInputError("positive/negative: this conditioning does not come from 'GLM-Image "
                                     "conditioning'; GLM-Image's DiT needs its tokens and glyph embeddings")
        noise = kwargs.get("noise")
        if noise is not None:
            check_latent_matches(noise, prior_ids, self.dit, kwargs.get("glm_size"))
        out = {
            "glm_glyphs": GlyphCond(glyphs),
            "glm_glyph_lengths": comfy.conds.CONDRegular(torch.tensor([glyphs.shape[1]])),
            "glm_prior_ids": comfy.conds.CONDRegular(prior_ids),
            "glm_prior_drop": comfy.conds.CONDRegular(kwargs["glm_prior_drop"]),
        }
        sources = kwargs.get("glm_sources")
        if sources is not None:
            out["glm_sources"] = comfy.conds.CONDConstant(sources)
            out["glm_read_sources"] = comfy.conds.CONDRegular(kwargs["glm_read_sources"])
        return out

    def memory_required(self, input_shape, cond_shapes={}):
        """Activations of one forward over `input_shape[0]` rows (glmimage_core.dit.fit, as the engine's loop)."""
        rows, _, height, width = input_shape[:4]
        return latent_step_bytes(self.dit, height, width, rows)


def check_latent_matches(latent: torch.Tensor, prior_ids: torch.Tensor, dit: DiTModel,
                         size: tuple[int, int] | None = None) -> None:
    """The LATENT given to the sampler must have the tokens' picture size (and their count): GLM-Image's DiT
    renders one prior token per latent patch, so it cannot sample a latent of another size (an upscaled one)
    with these tokens. `size` is the tokens' (height, width) in px, from the conditioning."""
    patch = dit.patch_size
    height, width = latent.shape[-2], latent.shape[-1]
    expected = prior_ids.shape[-1]
    if height % patch or width % patch or (height // patch) * (width // patch) != expected:
        scale = dit.vae_scale_factor
        if size is not None:
            tokens = f"{int(size[1])}x{int(size[0])} px"
        else:
            side = int(math.isqrt(expected))
            tokens = f"{expected} DiT patches (e.g. {side * patch * scale}x{side * patch * scale} px)"
        raise GlmImageInputError(
            f"latent: the sampler's latent is {width * scale}x{height * scale} px but the GLM-Image tokens are for "
            f"{tokens}: connect 'GLM-Image conditioning''s LATENT output to the sampler (or a VAE Encode of a "
            f"picture of the tokens' size). GLM-Image's DiT renders only at its tokens' size, so a latent upscale "
            f"cannot reuse them: for a second pass at a larger size, make tokens for that size (a multiple of "
            f"32 px: 'GLM-Image shape' -> generate -> 'GLM-Image conditioning') and give the upscaled latent to "
            f"that sampler with denoise < 1")
    if prior_ids.shape[0] not in (1, latent.shape[0]):
        raise GlmImageInputError(f"latent: its batch holds {latent.shape[0]} pictures but the GLM-Image tokens hold "
                                 f"{prior_ids.shape[0]}: use the conditioning node's latent output (one per grid)")


__all__ = ["GlmImageModel", "GlmImageLatentFormat", "GlmImageModelConfig", "SourceImages", "check_latent_matches"]
