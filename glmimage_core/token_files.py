"""Saving and loading `PriorTokens` as safetensors, so tokens can be sampled once and decoded often.

Only safetensors is ever read (no pickle): the grids are tensors, everything
else is string metadata that is checked on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import GlmImageInputError
from .prior import PriorTokens

FORMAT = "glm-image-prior"
VERSION = "1"


def save_prior(prior: PriorTokens, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"grids": prior.grids.to("cpu", torch.int64).contiguous()}
    for i, grid in enumerate(prior.source_grids):
        tensors[f"source_grid_{i}"] = grid.to("cpu", torch.int64).contiguous()
    metadata = {
        "format": FORMAT, "version": VERSION, "mode": prior.mode, "prompt": prior.prompt,
        "codebook_size": str(prior.codebook_size), "token_h": str(prior.token_h), "token_w": str(prior.token_w),
        "batch_size": str(prior.batch_size), "num_sources": str(len(prior.source_grids)),
        "seeds": json.dumps(prior.seeds),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_prior(path: str | Path) -> PriorTokens:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors":
        raise GlmImageInputError(f"token file {path.name!r} is not a .safetensors file")
    if not path.is_file():
        raise GlmImageInputError(f"token file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise GlmImageInputError(f"token file {path.name!r} is not a readable safetensors file: {err}") from err
    if meta.get("format") != FORMAT:
        raise GlmImageInputError(f"{path.name!r} is not a GLM-Image token file (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r}); save tokens with 'Save GLM-Image tokens'")
    if meta.get("version") != VERSION:
        raise GlmImageInputError(f"{path.name!r} has token file version {meta.get('version')!r}; this pack "
                                 f"reads version {VERSION}")
    try:
        grids = tensors["grids"]
        codebook = int(meta["codebook_size"])
        token_h, token_w, batch = int(meta["token_h"]), int(meta["token_w"]), int(meta["batch_size"])
        sources = [tensors[f"source_grid_{i}"] for i in range(int(meta["num_sources"]))]
        mode = meta["mode"]
        seeds = [int(s) for s in json.loads(meta.get("seeds", "[]"))]
    except (KeyError, ValueError, TypeError) as err:
        raise GlmImageInputError(f"token file {path.name!r} is incomplete ({err})") from err
    if tuple(grids.shape) != (batch, token_h, token_w):
        raise GlmImageInputError(f"token file {path.name!r}: grids have shape {tuple(grids.shape)} but its "
                                 f"metadata says {batch}x{token_h}x{token_w}")
    if mode not in ("t2i", "i2i") or (mode == "i2i") != bool(sources):
        raise GlmImageInputError(f"token file {path.name!r}: mode {mode!r} does not match its "
                                 f"{len(sources)} source grid(s)")
    for name, grid in [("grids", grids)] + [(f"source grid {i}", g) for i, g in enumerate(sources)]:
        if grid.dtype != torch.int64 or grid.numel() == 0 or int(grid.min()) < 0 or int(grid.max()) >= codebook:
            raise GlmImageInputError(f"token file {path.name!r}: {name} holds ids outside 0..{codebook - 1}")
    return PriorTokens(grids=grids, mode=mode, prompt=meta.get("prompt", ""), codebook_size=codebook,
                       source_grids=sources, seeds=seeds)
