"""GLM-Image's DiT as a native ComfyUI `MODEL`: what KSampler, LoRA loaders and model patches work on.

- `GlmImageModel` is a `comfy.model_base.BaseModel` whose diffusion model is
  diffusers' `GlmImageTransformer2DModel` (with ComfyUI cast layers, see
  glmimage_core.cast_layers) behind `GlmImageDiffusionModel`, a thin adapter from
  ComfyUI's call convention to the pack's one DiT forward (glmimage_core.dit_forward).
- Sampling is flow matching (`ModelSamplingDiscreteFlow` + `CONST`, like SD3 and
  Flux) with shift = GLM-Image's mu for the picture size. The DiT was trained on
  the *unshifted* timestep minus one: `process_timestep` maps the noise level
  sigma back through GLM-Image's own mu for the latent's size (never through the
  sampling object's shift), so any ComfyUI sampler and scheduler feeds it what
  diffusers' pipeline feeds it, and a stock flow model-sampling node
  (ModelSamplingSD3 / AuraFlow / Flux) only changes the schedule. Non-flow
  model sampling (ModelSamplingDiscrete eps/v, EDM, ...) is refused by name.
- Latents are normalised per channel (`GlmImageLatentFormat`, the VAE config's
  latents_mean / latents_std), so stock `VAE Decode` gets raw VAE latents, and
  the latent-to-RGB preview factors are fitted from the VAE itself on first use.
- Conditioning (see conditioning.py) carries the prior tokens, glyph embeddings
  and, for image-to-image, the source images; each row of a batch knows whether
  it keeps or drops the tokens and whether it reads the sources, so ComfyUI may
  batch the positive and negative conditioning into one forward.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.patcher_extension
import comfy.supported_models_base
import comfy.utils

from ..glmimage_core import decoder_loading, vram_plan
from ..glmimage_core.comfy_memory import adopt, limit_resident, new_patcher, patcher_of
from ..glmimage_core.dit_forward import SourceKV, build_source_kv, velocity
from ..glmimage_core.dit_sampling import calculate_shift, image_seq_len, shift_for
from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.payloads import DiTModel, LatentStats

log = logging.getLogger("GLM-Image")

#: The picture size whose shift the loaded MODEL starts with, until "GLM-Image conditioning" sets the right one.
DEFAULT_SIZE_PX = 1024
KV_WRAPPER_KEY = "glm_image_source_kv"


# --------------------------------------------------------------------------- latent format


class GlmImageLatentFormat(comfy.latent_formats.LatentFormat):
    """Per-channel mean/std normalisation; preview factors fitted from the VAE the first time they are read."""

    latent_dimensions = 2

    def __init__(self, stats: LatentStats, preview_factors=None) -> None:
        self.latent_channels = stats.channels
        self.stats = stats
        self._preview_source = preview_factors  # () -> (factors [C][3], bias [3]) or None
        self._preview: tuple | None = None

    def _tensors(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stats.tensors(latent.device, latent.dtype)

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._tensors(latent)
        return (latent - mean) / std

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._tensors(latent)
        return latent * std + mean

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


# --------------------------------------------------------------------------- model config and sampling


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


class GlmImageModelSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    """Flow matching with GLM-Image's linear time shift (mu): the pack's own schedule.

    Its class tells the pack's own default (which 'GLM-Image conditioning' replaces
    with the shift for the tokens' size) from a stock model-sampling node's (kept)."""


def model_sampling_for(model_config, shift: float):
    sampling = GlmImageModelSampling(model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    return sampling


def unshifted_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of the time shift sigma' = s*sigma / (1 + (s-1)*sigma)."""
    return sigma / (shift - (shift - 1.0) * sigma)


def sampling_node_name(sampling) -> str:
    """The node that made a model_sampling object, for messages. Stock nodes build a local class inside their
    patch method (`ModelSamplingSD3.patch.<locals>.ModelSamplingAdvanced`); AuraFlow reuses SD3's with
    multiplier 1."""
    if isinstance(sampling, GlmImageModelSampling):
        return "GLM-Image conditioning"
    qualname = type(sampling).__qualname__
    name = qualname.split(".")[0] if "<locals>" in qualname else type(sampling).__name__
    if name == "ModelSamplingSD3" and float(getattr(sampling, "multiplier", 1000)) == 1.0:
        return "ModelSamplingAuraFlow"
    if name == "model_sampling":  # comfy.model_base's own default for a model type
        return "the model's default model sampling"
    return name


def is_flow_sampling(sampling) -> bool:
    """Flow matching as GLM-Image's DiT needs it: x = sigma*noise + (1-sigma)*x0 with sigma in 0..1, a velocity
    output (CONST's formulas, not overridden as IMG_TO_IMG_FLOW does) and a timestep linear in sigma."""
    if not isinstance(sampling, comfy.model_sampling.CONST):
        return False
    cls = type(sampling)
    if (cls.calculate_denoised is not comfy.model_sampling.CONST.calculate_denoised
            or cls.noise_scaling is not comfy.model_sampling.CONST.noise_scaling):
        return False
    try:
        if float(sampling.sigma_max) > 1.0 + 1e-4:
            return False
        probe = torch.tensor([0.25, 1.0])
        steps = sampling.timestep(probe).float()
    except Exception:
        return False
    return bool(steps[1] > 0 and torch.isclose(steps[0] * 4, steps[1], rtol=1e-5).item())


def _sampling_kind(sampling) -> str:
    """'ModelSamplingDiscrete + V_PREDICTION' for a stock node's local class: its schedule and prediction."""
    cls = type(sampling)
    if "<locals>" in cls.__qualname__ and cls.__bases__ != (object,):
        return " + ".join(base.__name__ for base in cls.__bases__)
    return cls.__name__


def require_flow_sampling(sampling) -> None:
    """Refuse eps/v/EDM/... model sampling on GLM-Image's DiT, naming the node that set it."""
    if not is_flow_sampling(sampling):
        name = sampling_node_name(sampling)
        raise GlmImageInputError(
            f"{name}: GLM-Image is a flow-matching model (its DiT predicts a velocity on a 0..1 noise scale); "
            f"its {_sampling_kind(sampling)} sampling cannot drive it: remove the node or use "
            f"ModelSamplingSD3 / ModelSamplingAuraFlow / ModelSamplingFlux to change the schedule's shift")


def timestep_scale(sampling) -> float:
    """What ComfyUI's timestep is per unit of sigma for a flow sampling (1000 for SD3, 1 for AuraFlow/Flux)."""
    return float(sampling.timestep(torch.tensor(1.0)))


def linear_shift_of(sampling) -> float | None:
    """The schedule's shift as GLM-Image's linear mu (Flux's exponential shift s is the linear exp(s))."""
    shift = getattr(sampling, "shift", None)
    if shift is None:
        return None
    if isinstance(sampling, comfy.model_sampling.ModelSamplingFlux):
        return math.exp(float(shift))
    return float(shift)


def latent_shift(dit: DiTModel, latent: torch.Tensor) -> float:
    """GLM-Image's mu for a latent's picture size (DiT patches of its last two dims)."""
    patch = dit.patch_size
    return shift_for(dit.scheduler_config, (latent.shape[-2] // patch) * (latent.shape[-1] // patch))


def dit_timestep(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """The timestep GLM-Image's DiT was trained on for noise level `sigma`: unshifted by its mu, * 1000, - 1."""
    return unshifted_sigma(sigma, mu) * 1000.0 - 1.0


def dit_timestep_for(sampling, timestep: torch.Tensor, latent: torch.Tensor, dit: DiTModel) -> torch.Tensor:
    """`GlmImageModel.process_timestep`: ComfyUI's `sampling.timestep(sigma)` -> the DiT's timestep for `latent`."""
    require_flow_sampling(sampling)
    return dit_timestep(timestep / timestep_scale(sampling), latent_shift(dit, latent))


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
        conds = [self.cond] + [o.cond for o in others]
        longest = max(c.shape[1] for c in conds)
        return torch.cat([torch.nn.functional.pad(c, (0, 0, 0, longest - c.shape[1])) for c in conds])


# --------------------------------------------------------------------------- the model


class GlmImageDiffusionModel(torch.nn.Module):
    """ComfyUI's `diffusion_model(x, t, context=..., **conds)` -> glmimage_core.dit_forward.velocity.

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
        """The storage dtype of the block weights (fp8 with weight_dtype fp8), as ComfyUI's own models report."""
        block = self.transformer.transformer_blocks[0].ff.net[2]
        return block.weight.dtype

    def clear_source_kv(self) -> None:
        self._source_kv.clear()

    def _kv_for(self, sources: SourceImages, dtype: torch.dtype, device: torch.device) -> SourceKV:
        entry = self._source_kv.get(id(sources))
        if entry is None or entry[0] is not sources:
            latents = [self.latent_stats.normalise(lat.to(device, torch.float32)).to(dtype) for lat in sources.latents]
            kv = build_source_kv(self.transformer, latents, [i.to(device) for i in sources.ids], self.pixel_scale)
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
        """Activations of one forward over `input_shape[0]` rows (glmimage_core.vram_plan.dit_step_bytes)."""
        rows, _, height, width = input_shape[:4]
        config = self.diffusion_model.transformer.config
        return vram_plan.dit_step_bytes(config, height, width, rows,
                                        act_bytes=self.diffusion_model.compute_dtype.itemsize)


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
    patcher = patcher_of(dit)
    if patcher is None or not isinstance(patcher.model, GlmImageModel):
        patcher = _new_patcher(dit, preview_factors)
        adopt(dit, patcher)  # a generic patcher made before (plain Python use inside ComfyUI) gives way
    return patcher


def _new_patcher(dit: DiTModel, preview_factors, disable_dynamic: bool = False):
    fmt = GlmImageLatentFormat(dit.latent_stats, preview_factors)
    shift = shift_for(dit.scheduler_config, image_seq_len(dit, DEFAULT_SIZE_PX, DEFAULT_SIZE_PX))
    config = GlmImageModelConfig(fmt, shift, dit.dtype if dit.weight_dtype != "default" else None)
    model = GlmImageModel(config, dit, device=comfy.model_management.get_torch_device())
    patcher = new_patcher(model, dit.device, comfy.model_management.unet_offload_device(), disable_dynamic)
    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KV_WRAPPER_KEY, _clear_source_kv)
    # What ComfyUI's own loaders register (sd.load_diffusion_model): how to load this MODEL afresh, for
    # clone(force_deepcopy=True), deepclone_multigpu and clone(disable_dynamic=True), which raise without it.
    patcher.cached_patcher_init = (fresh_native_model, (
        dit.path, dit.dtype, str(dit.device), dit.weight_dtype, dict(dit.scheduler_config), dit.latent_stats,
        dit.vae_scale_factor, preview_factors))
    return patcher


def fresh_native_model(path: str, dtype: torch.dtype, device: str, weight_dtype: str, scheduler_config: dict,
                       latent_stats, vae_scale_factor: int, preview_factors=None, disable_dynamic: bool = False):
    """A MODEL over a DiT loaded anew from `path` (not the pack's cached one): the `cached_patcher_init`
    factory of the pack's MODELs. The copy holds weights of its own and samples exactly what the original
    does; ComfyUI passes `disable_dynamic=True` when it wants a plain (non dynamic-VRAM) patcher. A loader's
    VRAM limit is not an argument: it is a wrapper of the MODEL (`with_vram_limit`), which ComfyUI's clones
    copy onto the fresh copy."""
    dit = decoder_loading.fresh_dit(path, dtype, device, weight_dtype, scheduler_config, latent_stats,
                                    vae_scale_factor)
    patcher = _new_patcher(dit, preview_factors, disable_dynamic)
    adopt(dit, patcher)
    return patcher


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


def with_shift_for(model_patcher, height: int, width: int):
    """A clone of the MODEL whose schedule has GLM-Image's shift for a `width` x `height` px picture (replacing any
    model sampling it had; conditioning.build_conditioning keeps a stock node's instead)."""
    model = model_patcher.model
    dit: DiTModel = model.dit
    shift = shift_for(dit.scheduler_config, image_seq_len(dit, height, width))
    clone = model_patcher.clone()
    clone.add_object_patch("model_sampling", model_sampling_for(model.model_config, shift))
    return clone


__all__ = ["GlmImageModel", "GlmImageLatentFormat", "SourceImages", "native_model", "with_shift_for",
           "with_vram_limit", "calculate_shift", "unshifted_sigma", "require_flow_sampling", "timestep_scale",
           "dit_timestep"]
