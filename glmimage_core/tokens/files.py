"""Saving and loading `PriorTokens` as safetensors, so tokens can be sampled once and decoded often.

Only safetensors is ever read (no pickle): the grids are tensors, everything
else is string metadata. Loading is header first: the file's size, its
safetensors header, its metadata (format, version, sizes) and its tensor index
(names, dtype, shapes, offsets) are all checked before a single tensor byte is
read, so pointing the loader at a model's weights file reads a few bytes of it,
never its gigabytes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..errors import GlmImageInputError
from ..payloads import PriorTokens
from ..weights.files import BadHeader, safetensors_header

FORMAT = "glm-image-prior"
VERSION = "1"

#: The largest token file this pack reads. The largest real one holds 16 grids of 64x64 int64 ids
#: (512 KiB) plus a few source grids and the prompt; anything this big is something else (weights).
MAX_FILE_BYTES = 16 * 1024 * 1024
_ID_DTYPE, _ID_BYTES = "I64", 8


def save_prior(prior: PriorTokens, path: str | Path) -> Path:
    """Write `prior` as a token file (.safetensors: the grids, the source grids, and mode/prompt/seeds/size in
    its metadata) and return its path; the folder is made if needed."""
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


def _read_header(f, size: int, name: str) -> tuple[dict, dict, bytes]:
    """(metadata, tensor index, raw header bytes) of an open safetensors file, reading only its header."""
    try:
        header, raw = safetensors_header(f, size)
    except BadHeader as err:
        reason = {"short": f"only {size} bytes",
                  "length": f"its header claims {err.detail} bytes but the file has {size}",
                  "json": f"bad header ({err.detail})"}[err.reason]
        raise GlmImageInputError(f"token file {name!r} is not a readable safetensors file: {reason}") \
            from err.__cause__
    if not isinstance(header, dict):
        raise GlmImageInputError(f"token file {name!r} is not a readable safetensors file: the header is not "
                                 f"a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise GlmImageInputError(f"token file {name!r} is not a readable safetensors file: bad __metadata__")
    return meta, header, raw


def _check_format(meta: dict, name: str) -> None:
    if meta.get("format") != FORMAT:
        raise GlmImageInputError(f"{name!r} is not a GLM-Image token file (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r}); save tokens with 'Save GLM-Image tokens'")
    if meta.get("version") != VERSION:
        raise GlmImageInputError(f"{name!r} has token file version {meta.get('version')!r}; this pack "
                                 f"reads version {VERSION}")


def _check_index(index: dict, meta: dict, data_bytes: int, name: str) -> None:
    """The tensors the metadata promises, and nothing else: int64 grids of the stated sizes, inside the file."""
    try:
        batch, token_h, token_w = int(meta["batch_size"]), int(meta["token_h"]), int(meta["token_w"])
        num_sources = int(meta["num_sources"])
    except (KeyError, ValueError, TypeError) as err:
        raise GlmImageInputError(f"token file {name!r} is incomplete ({err})") from err
    expected = {"grids"} | {f"source_grid_{i}" for i in range(max(num_sources, 0))}
    if set(index) != expected:
        raise GlmImageInputError(f"token file {name!r} holds tensors {sorted(index)}; a GLM-Image token file "
                                 f"with {num_sources} source grid(s) holds {sorted(expected)}")
    for tensor_name, entry in index.items():
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        rank = 3 if tensor_name == "grids" else 2
        if (entry.get("dtype") != _ID_DTYPE or not isinstance(shape, list) or len(shape) != rank
                or not all(isinstance(s, int) and s > 0 for s in shape)):
            raise GlmImageInputError(f"token file {name!r}: {tensor_name} is {entry.get('dtype')} {shape}; "
                                     f"expected {rank}-D {_ID_DTYPE} token ids")
        if tensor_name == "grids" and shape != [batch, token_h, token_w]:
            raise GlmImageInputError(f"token file {name!r}: grids have shape {tuple(shape)} but its "
                                     f"metadata says {batch}x{token_h}x{token_w}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_bytes
                or offsets[1] - offsets[0] != math.prod(shape) * _ID_BYTES):
            raise GlmImageInputError(f"token file {name!r}: {tensor_name}'s data lies outside the file or has "
                                     f"the wrong length (offsets {offsets})")


def read_token_metadata(path: str | Path) -> dict:
    """The metadata of a GLM-Image token file, from its header alone (size, format and tensor index
    checked); raises GlmImageInputError for anything else. No tensor is read."""
    path = Path(path)
    with open(path, "rb") as f:
        meta, _, _ = _open_checked(f, path.name)
    return meta


def _open_checked(f, name: str) -> tuple[dict, bytes, int]:
    """Checks an open file from its size and header; returns (metadata, header bytes, data bytes).
    Leaves `f` at the start of the data section, nothing of which has been read."""
    size = os.fstat(f.fileno()).st_size
    if size > MAX_FILE_BYTES:
        raise GlmImageInputError(f"{name!r} is {size / 2**20:.1f} MiB; GLM-Image token files are far smaller "
                                 f"(at most {MAX_FILE_BYTES // 2**20} MiB), so this is not one (model weights?)")
    meta, index, header = _read_header(f, size, name)
    _check_format(meta, name)
    data_bytes = size - len(header)
    _check_index(index, meta, data_bytes, name)
    return meta, header, data_bytes


def is_token_file(path: str | Path) -> bool:
    """Whether `path` is a GLM-Image token file (judged from its size and header only)."""
    try:
        read_token_metadata(path)
    except (GlmImageInputError, OSError):
        return False
    return True


def load_prior(path: str | Path) -> PriorTokens:
    """Read a token file written by `save_prior`; its size, header and metadata are checked before any tensor is
    read, so a wrong file (a model's weights, say) costs a few bytes and a clear message."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise GlmImageInputError(f"token file {path.name!r} is not a .safetensors file")
    if not path.is_file():
        raise GlmImageInputError(f"token file {str(path)!r} does not exist")
    with open(path, "rb") as f:  # one open file, one pass: the header checked is the header parsed
        meta, header, data_bytes = _open_checked(f, path.name)
        data = f.read(data_bytes)
    try:
        tensors = load_safetensors(header + data)
    except (SafetensorError, ValueError) as err:
        raise GlmImageInputError(f"token file {path.name!r} is not a readable safetensors file: {err}") from err
    try:
        grids = tensors["grids"]
        codebook = int(meta["codebook_size"])
        sources = [tensors[f"source_grid_{i}"] for i in range(int(meta["num_sources"]))]
        mode = meta["mode"]
        seeds = [int(s) for s in json.loads(meta.get("seeds", "[]"))]
    except (KeyError, ValueError, TypeError) as err:
        raise GlmImageInputError(f"token file {path.name!r} is incomplete ({err})") from err
    if mode not in ("t2i", "i2i") or (mode == "i2i") != bool(sources):
        raise GlmImageInputError(f"token file {path.name!r}: mode {mode!r} does not match its "
                                 f"{len(sources)} source grid(s)")
    for name, grid in [("grids", grids)] + [(f"source grid {i}", g) for i, g in enumerate(sources)]:
        if grid.dtype != torch.int64 or grid.numel() == 0 or int(grid.min()) < 0 or int(grid.max()) >= codebook:
            raise GlmImageInputError(f"token file {path.name!r}: {name} holds ids outside 0..{codebook - 1}")
    return PriorTokens(grids=grids, mode=mode, prompt=meta.get("prompt", ""), codebook_size=codebook,
                       source_grids=sources, seeds=seeds)
