"""Draw the pack's Registry icon (docs/icon.png) with the pack's own token-preview code.

The icon is what the generate node shows while it samples: a token grid filling in row by
row, coloured by a codebook palette (`token_preview.codebook_palette`), with the cells not
sampled yet in the live preview's dark grey. The codebook here is synthetic: 16 x 16 entries
laid out on a smooth 2-D sheet, so neighbouring entries get neighbouring colours, as close
codebook vectors do with a real model. Deterministic: running it again gives the same PNG.

    .venv/bin/python scripts/make_icon.py            # writes docs/icon.png (384 x 384)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from glmimage_core.shapes import GridShape  # noqa: E402
from glmimage_core.tokens.grid_preview import LiveGridPreview, codebook_palette  # noqa: E402

SIDE = 16          # the synthetic codebook is SIDE x SIDE entries on a 2-D sheet
GRID = 16          # the icon's token grid: GRID x GRID tokens
CELL = 24          # pixels per token: 16 * 24 = 384 px
FILLED = 203       # tokens already sampled (of 256): the last rows are still to come


def sheet_codebook() -> torch.Tensor:
    """[SIDE*SIDE, 12] vectors that vary smoothly with their (u, v) place on the sheet."""
    u, v = torch.meshgrid(torch.linspace(0, 1, SIDE), torch.linspace(0, 1, SIDE), indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    features = [torch.cos(math.pi * k * u) for k in (1, 2)] + [torch.cos(math.pi * k * v) for k in (1, 2)]
    features += [u, v, u * v, torch.sin(math.pi * u) * torch.sin(math.pi * v)]
    base = torch.stack(features, dim=1)
    return torch.cat([base, 0.5 * base[:, :4]], dim=1) + 0.3


def picture_ids() -> torch.Tensor:
    """The ids of a small landscape (sky, sun, hills): each id is a place on the sheet."""
    ids = torch.empty(GRID, GRID, dtype=torch.long)
    for r in range(GRID):
        for c in range(GRID):
            y, x = r / (GRID - 1), c / (GRID - 1)
            hill = 0.62 + 0.12 * math.sin(2.4 * x + 0.8) + 0.05 * math.sin(7 * x)
            sun = math.hypot(x - 0.7, y - 0.28) < 0.17
            if y > hill:       # ground: the middle of the sheet, darker with depth
                u, v = 0.5 + 0.3 * (y - hill), 0.3 + 0.8 * (y - hill) + 0.1 * x
            elif sun:          # the sun: a far corner
                u, v = 0.35, 0.0
            else:              # sky: along one edge, lighter towards the horizon
                u, v = 1.0, 1.0 - 0.6 * y
            ids[r, c] = round(u * (SIDE - 1)) * SIDE + round(v * (SIDE - 1))
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "icon.png"))
    args = parser.parse_args()
    palette = codebook_palette(sheet_codebook())
    live = LiveGridPreview(GridShape(GRID, GRID), "i2i", SIDE * SIDE, palette, max_px=GRID * CELL)
    image = live.render(picture_ids().reshape(-1)[:FILLED])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)
    print(f"wrote {out} ({image.size[0]}x{image.size[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
