"""How ComfyUI's samplers meet GLM-Image's DiT: flow matching, its schedule's shift, and the DiT's timestep.

GLM-Image's pipeline feeds the DiT the *unshifted* timestep minus one while its
Euler step walks the *shifted* noise levels (mu from the picture size). ComfyUI
passes a model `model_sampling.timestep(sigma)`, whose scale depends on which
model-sampling object is active (1000 for SD3, 1 for AuraFlow and Flux), so the
DiT's timestep is computed from the noise level sigma itself and GLM-Image's own
mu for the latent's size, never from the sampling object's shift or multiplier.
A stock flow model-sampling node (ModelSamplingSD3 / AuraFlow / Flux) therefore
only changes which noise levels are visited; non-flow model sampling
(ModelSamplingDiscrete eps/v, EDM, ...) is refused with the node named.
"""

from __future__ import annotations

import math

import torch

import comfy.model_sampling

from ..glmimage_core.dit.sampling import image_seq_len, shift_for
from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.payloads import DiTModel


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


def glm_shift(dit: DiTModel, height: int, width: int) -> float:
    """GLM-Image's own shift (mu) for a `width` x `height` px picture: the one the pipeline uses."""
    return shift_for(dit.scheduler_config, image_seq_len(dit, height, width))


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


def with_shift_for(model_patcher, height: int, width: int):
    """A clone of the MODEL whose schedule has GLM-Image's shift for a `width` x `height` px picture (replacing any
    model sampling it had; conditioning.build_conditioning keeps a stock node's instead)."""
    model = model_patcher.model
    dit: DiTModel = model.dit
    clone = model_patcher.clone()
    clone.add_object_patch("model_sampling", model_sampling_for(model.model_config, glm_shift(dit, height, width)))
    return clone


__all__ = ["GlmImageModelSampling", "model_sampling_for", "require_flow_sampling", "timestep_scale",
           "linear_shift_of", "sampling_node_name", "glm_shift", "dit_timestep", "dit_timestep_for", "with_shift_for",
           "unshifted_sigma"]
