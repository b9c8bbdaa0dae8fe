"""Generated ids -> the large token grid(s) (`GLMIMAGE_PRIOR`).

Text-to-image output starts with the preview grid, which the decoder does not
use. Generation may also end early (EOS before the grid is full) or, since
`generate` masks nothing, put a non-codebook id inside a grid: both are errors
that say how many good tokens came, never something padded over.
"""

from __future__ import annotations

import torch

from ..errors import GlmImageInputError
from ..payloads import GeneratedTokens, PriorTokens


def extract_prior(tokens: GeneratedTokens) -> PriorTokens:
    """The grid(s) the decoder is conditioned on, one per picture, from the AR model's sampled ids.

    Skips text-to-image's preview grid; raises `GlmImageInputError` (naming the picture and its seed) when
    generation ended early or put a non-codebook id inside a grid."""
    shape, mode = tokens.shape, tokens.mode
    offset = shape.grid_offset(mode)
    needed = offset + shape.num_tokens
    grids = []
    for i, seq in enumerate(tokens.sequences):
        label = f"sample {i + 1} (seed {tokens.seeds[i]})" if len(tokens.seeds) > i else f"sample {i + 1}"
        ends = (seq == tokens.image_end_id).nonzero()
        length = int(ends[0]) if len(ends) else int(seq.shape[0])
        if length < needed:
            part = f"{offset} preview + {shape.num_tokens} grid" if offset else f"{shape.num_tokens} grid"
            raise GlmImageInputError(
                f"generation for {label} ended after {length} tokens, but {shape.describe()} needs {needed} "
                f"({part} tokens): try another seed, or check that the prompt and model are right")
        grid = seq[offset:needed]
        bad = (grid < 0) | (grid >= tokens.codebook_size)
        if bool(bad.any()):
            pos = int(bad.nonzero()[0])
            raise GlmImageInputError(
                f"generation for {label} put id {int(grid[pos])} at grid position {pos} (after {pos} good "
                f"tokens of {shape.num_tokens}); only codebook ids 0..{tokens.codebook_size - 1} can be decoded: "
                "try another seed")
        grids.append(grid.view(shape.token_h, shape.token_w).to(torch.long))
    return PriorTokens(grids=torch.stack(grids), mode=mode, prompt=tokens.prompt,
                       codebook_size=tokens.codebook_size, source_grids=list(tokens.source_grids),
                       seeds=list(tokens.seeds), palette=tokens.palette)
