"""`PriorTokens`: the token grids that travel from the AR stage to the decoder.

This is what a `GLMIMAGE_PRIOR` socket carries and what "Save GLM-Image tokens"
writes. It holds d32 grids as the AR model sampled them; the decoder wants d16
(each token repeated 2x2), which `upsample_d32_to_d16` derives, so only one copy
is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def upsample_d32_to_d16(grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of [..., H, W] ids, as `GlmImagePipeline._upsample_token_ids`."""
    return grid.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


@dataclass
class PriorTokens:
    """Image tokens for N pictures of one shape, ready for the diffusion decoder.

    grids: [N, token_h, token_w] int64 codebook ids (d32: one id per 32x32 px).
    source_grids: for image-to-image, one [h, w] d32 grid per source image (shared
        by all N samples, as the sources are); empty for text-to-image.
    codebook_size: ids must be < this; the decoder checks it against its DiT.
    palette: [codebook_size, 3] colours from the codebook of the model that sampled the
        grids (`token_preview.model_palette`), so the preview node colours them as the live
        preview did. In memory only: token files do not store it (None after loading one,
        and then the preview falls back to fixed hues).
    """

    grids: torch.Tensor
    mode: str  # "t2i" or "i2i"
    prompt: str
    codebook_size: int
    source_grids: list[torch.Tensor] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    palette: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def token_h(self) -> int:
        return int(self.grids.shape[-2])

    @property
    def token_w(self) -> int:
        return int(self.grids.shape[-1])

    @property
    def batch_size(self) -> int:
        return int(self.grids.shape[0])

    @property
    def height(self) -> int:
        return 32 * self.token_h

    @property
    def width(self) -> int:
        return 32 * self.token_w

    def d16(self) -> torch.Tensor:
        """[N, 4*H*W] ids as `GlmImagePipeline(prior_token_ids=...)` expects them."""
        return upsample_d32_to_d16(self.grids).reshape(self.batch_size, -1)

    def source_d16(self) -> list[torch.Tensor]:
        """Flat d16 ids per source image, as diffusers' `prior_token_image_ids` holds them."""
        return [upsample_d32_to_d16(g).reshape(-1) for g in self.source_grids]
