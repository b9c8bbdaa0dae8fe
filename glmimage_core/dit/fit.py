"""Does a DiT step or a VAE decode fit in free VRAM: the fit checks both samplers of the pack make.

The figures are `memory.vram_plan`'s (computed from the models' configs); this
module puts them in the DiT's terms (pictures in px, rows of a guided batch,
the DiT's compute dtype) so the engine's loop (dit/sampling.py: batch both
guidance branches or not, tile the VAE decode or not), the native MODEL's
`memory_required`, the decode node's VRAM note and its VAE decode
(glmimage_comfy) all ask the same question the same way. Free memory is the
caller's figure (None: no limit known, e.g. on the CPU), so this module never
asks a host for it.
"""

from __future__ import annotations

from ..memory import vram_plan
from ..payloads import DiTModel


def latent_step_bytes(dit: DiTModel, latent_h: int, latent_w: int, rows: int) -> int:
    """Working memory of one DiT forward over `rows` rows of a latent_h x latent_w latent, in its compute dtype."""
    return vram_plan.dit_step_bytes(dit.transformer.config, latent_h, latent_w, rows, act_bytes=dit.dtype.itemsize)


def step_bytes(dit: DiTModel, height: int, width: int, rows: int) -> int:
    """Working memory of one DiT forward over `rows` rows of a `width` x `height` px picture."""
    scale = dit.vae_scale_factor
    return latent_step_bytes(dit, height // scale, width // scale, rows)


def rows_fit(dit: DiTModel, height: int, width: int, rows: int, free: int | None, extra_bytes: int = 0) -> bool:
    """Whether a forward over `rows` rows (plus `extra_bytes` held beside it) fits in `free` bytes (None: yes)."""
    return free is None or step_bytes(dit, height, width, rows) + extra_bytes < free


def vae_decode_must_tile(vae_config, latent_h: int, latent_w: int, itemsize: int, free: int | None) -> bool:
    """Whether ONE picture's VAE decode would not fit in `free` bytes, so it should be tiled (None: never)."""
    return free is not None and free < vram_plan.vae_decode_bytes(vae_config, latent_h, latent_w, itemsize)
