"""A false-colour picture of a token grid, to see the AR stage's result without the decoder.

Each codebook id gets a fixed colour (golden-ratio hues, so neighbouring ids
differ clearly); repeated ids show as flat areas, structure shows as patterns.
"""

from __future__ import annotations

import colorsys

import torch

from .errors import GlmImageInputError


def palette(codebook_size: int) -> torch.Tensor:
    """[codebook_size, 3] float colours, the same for every run."""
    golden = 0.618033988749895
    colours = []
    for i in range(codebook_size):
        hue = (i * golden) % 1.0
        sat = 0.55 + 0.45 * ((i * 7) % 5) / 4
        val = 0.6 + 0.4 * ((i * 3) % 4) / 3
        colours.append(colorsys.hsv_to_rgb(hue, sat, val))
    return torch.tensor(colours, dtype=torch.float32)


def render_grid(grids: torch.Tensor, codebook_size: int, cell: int = 8) -> torch.Tensor:
    """[N,H,W] ids -> [N, H*cell, W*cell, 3] float 0..1 (ComfyUI IMAGE layout)."""
    if grids.ndim == 2:
        grids = grids.unsqueeze(0)
    if grids.ndim != 3 or grids.numel() == 0:
        raise GlmImageInputError(f"token grid must be [N, H, W] with tokens, got shape {tuple(grids.shape)}")
    if cell < 1:
        raise GlmImageInputError(f"cell size must be >= 1 px, got {cell}")
    if int(grids.min()) < 0 or int(grids.max()) >= codebook_size:
        raise GlmImageInputError(f"token ids must be in 0..{codebook_size - 1}, "
                                 f"got {int(grids.min())}..{int(grids.max())}")
    image = palette(codebook_size)[grids.long()]  # [N,H,W,3]
    return image.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2).contiguous()
