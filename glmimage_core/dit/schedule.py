"""GLM-Image's noise schedule, once: the timestep grid, the size-dependent shift, the DiT's timestep, Euler.

GLM-Image samples flow matching over `linspace(1000, 1, steps + 1)[:-1]`
(whole numbers) divided by 1000, each noise level shifted by mu, a function of
the picture's DiT patches. The DiT is fed the *unshifted* timestep minus one
while the Euler step walks the *shifted* noise levels. Both samplers of the pack
read these functions: the engine's loop (dit/sampling.py) takes `glm_schedule`
and `euler_step`; ComfyUI's sampler (glmimage_comfy/flow_sampling.py) takes
`unshifted_sigmas` for its SIGMAS and `dit_timestep` to turn the noise level it
passes the model back into the DiT's timestep. The numbers are diffusers'
`FlowMatchEulerDiscreteScheduler` (linear time shift, dynamic shifting), computed
the same way so the engine's pixels stay equal to `GlmImagePipeline`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: What the DiT's timestep embedding was trained on: noise level 1 = timestep 1000.
NUM_TRAIN_TIMESTEPS = 1000


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, base_shift: float = 0.25,
                    max_shift: float = 0.75) -> float:
    """mu for the resolution dependent time shift: bigger pictures spend more steps at high noise."""
    return (image_seq_len / base_seq_len) ** 0.5 * max_shift + base_shift


def shift_for(scheduler_config, seq_len: int) -> float:
    """mu of the resolution dependent shift, from a scheduler config (a dict or diffusers' config)."""
    return calculate_shift(seq_len, scheduler_config.get("base_image_seq_len", 256),
                           scheduler_config.get("base_shift", 0.25), scheduler_config.get("max_shift", 0.75))


def image_seq_len(dit, height: int, width: int) -> int:
    """DiT patches of a `width` x `height` px picture (a DiTModel or DecoderBundle): what the shift is computed from."""
    scale = dit.vae_scale_factor
    return (height // scale) * (width // scale) // dit.patch_size**2


def latent_seq_len(dit, latent: torch.Tensor) -> int:
    """DiT patches of a latent [.., h, w]: the same count as `image_seq_len` of its picture."""
    patch = dit.patch_size
    return (latent.shape[-2] // patch) * (latent.shape[-1] // patch)


def glm_shift(dit, height: int, width: int) -> float:
    """GLM-Image's own shift (mu) for a `width` x `height` px picture (a DiTModel): the one the pipeline uses."""
    return shift_for(dit.scheduler_config, image_seq_len(dit, height, width))


def latent_shift(dit, latent: torch.Tensor) -> float:
    """GLM-Image's mu for a latent's picture size (DiT patches of its last two dims)."""
    return shift_for(dit.scheduler_config, latent_seq_len(dit, latent))


def glm_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """GLM-Image's timesteps: linspace(1000, 1, steps + 1) without the last, truncated to whole numbers."""
    timesteps = np.linspace(num_train_timesteps, 1.0, steps + 1)[:-1]
    return timesteps.astype(np.int64).astype(np.float32)


def unshifted_sigmas(steps: int) -> torch.Tensor:
    """[steps] the noise levels before the shift: `glm_timesteps / 1000` (what ComfyUI's sampling shifts itself)."""
    return torch.from_numpy(glm_timesteps(steps, NUM_TRAIN_TIMESTEPS)) / float(NUM_TRAIN_TIMESTEPS)


def time_shift(sigmas, mu: float):
    """GLM-Image's linear time shift (diffusers' `_time_shift_linear`): mu / (mu + 1/sigma - 1)."""
    return mu / (mu + (1 / sigmas - 1) ** 1.0)


def unshift(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """Inverse of the time shift sigma' = mu*sigma / (1 + (mu-1)*sigma)."""
    return sigma / (mu - (mu - 1.0) * sigma)


def dit_timestep(sigma: torch.Tensor, mu: float) -> torch.Tensor:
    """The timestep GLM-Image's DiT was trained on for noise level `sigma`: unshifted by its mu, * 1000, - 1."""
    return unshift(sigma, mu) * float(NUM_TRAIN_TIMESTEPS) - 1.0


@dataclass
class Schedule:
    """One sampling run's schedule: `sigmas` [steps + 1] shifted noise levels ending at 0 (float32), and
    `timesteps` [steps] what the DiT is fed at each step (the unshifted whole timestep minus one)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    def __len__(self) -> int:
        return len(self.timesteps)


def glm_schedule(steps: int, mu: float, device: torch.device | str = "cpu") -> Schedule:
    """The schedule of `steps` steps with shift `mu`, as diffusers' scheduler computes it for GlmImagePipeline
    (float32 numpy, then a trailing 0). `dit_timestep(sigmas[:-1], mu)` gives `timesteps` back to float precision,
    which is how ComfyUI's sampler, which only passes noise levels, reaches the same DiT timesteps."""
    timesteps = glm_timesteps(steps, NUM_TRAIN_TIMESTEPS)
    shifted = time_shift(timesteps / NUM_TRAIN_TIMESTEPS, mu)
    sigmas = torch.cat([torch.from_numpy(shifted).to(torch.float32), torch.zeros(1)])
    return Schedule(sigmas=sigmas.to(device), timesteps=torch.from_numpy(timesteps).to(device) - 1.0)


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor,
               sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow: latents + (sigma_next - sigma) * velocity, in float32 (diffusers' upcast)."""
    return latents.to(torch.float32) + (sigma_next - sigma) * velocity
