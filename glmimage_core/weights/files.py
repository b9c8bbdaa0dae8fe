"""Weight files: safetensors headers read and checked before any weight is.

One reader of the safetensors header (`safetensors_header`: the u64 length, then
the JSON) serves the model weights here and the token files (token_files.py).
For weights it checks that a component folder has safetensors files, that each
is complete (its size matches its header) and which float dtype most tensors use.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from ..errors import GlmImageInputError

HEADER_LEN_BYTES = 8  # safetensors: u64 little-endian header length, then the JSON header
MAX_HEADER_BYTES = 100_000_000
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


class BadHeader(ValueError):
    """Why a safetensors header is unreadable: `reason` "short" (no length), "length" (a length the file
    cannot hold) or "json" (not JSON); `detail`: the size, the length or the decoding error."""

    def __init__(self, reason: str, detail) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def safetensors_header(f, size: int) -> tuple[object, bytes]:
    """(the parsed JSON header, the raw header bytes with their length prefix) of an open safetensors file of
    `size` bytes, reading only its header; raises `BadHeader`."""
    if size < HEADER_LEN_BYTES:
        raise BadHeader("short", size)
    length = int.from_bytes(f.read(HEADER_LEN_BYTES), "little")
    if length > size - HEADER_LEN_BYTES or length > MAX_HEADER_BYTES:
        raise BadHeader("length", length)
    raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise BadHeader("json", err) from err
    return header, length.to_bytes(HEADER_LEN_BYTES, "little") + raw


def check_safetensors(folder: Path, component: str) -> list[Path]:
    """Fail early, with the file named, on a missing, truncated or garbled safetensors file.

    Reads only each file's header (a few KB), so a 14 GB DiT is checked in
    milliseconds; diffusers' own message for a truncated file does not say
    which file or what to do.
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise GlmImageInputError(f"{component} folder {str(folder)!r} has no .safetensors weights; "
                                 "only safetensors are loaded (no pickle .bin files)")
    for file in files:
        _read_header(file, component)
    return files


def _read_header(file: Path, component: str) -> dict:
    size = file.stat().st_size
    broken = f"{component} weights {str(file)!r} are corrupted or incomplete"
    try:
        with file.open("rb") as handle:
            header, raw = safetensors_header(handle, size)
    except BadHeader as err:
        reason = {"short": f"the file is {size} bytes", "length": "bad header",
                  "json": f"unreadable header: {err.detail}"}[err.reason]
        raise GlmImageInputError(f"{broken} ({reason}); download it again") from err.__cause__
    header_len = len(raw) - HEADER_LEN_BYTES
    try:
        end = max((int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
        raise GlmImageInputError(f"{broken} (malformed header); download it again") from err
    if 8 + header_len + end != size:
        raise GlmImageInputError(f"{broken}: it should be {8 + header_len + end} bytes but is {size}; "
                                 "download it again")
    return header


def checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The float dtype most tensors of a component's safetensors use (configs do not say it for diffusers)."""
    counts: Counter = Counter()
    for file in sorted(folder.glob("*.safetensors"))[:1]:
        for key, info in _read_header(file, folder.name).items():
            if key != "__metadata__" and info.get("dtype") in _SAFETENSORS_DTYPES:
                counts[info["dtype"]] += 1
    return _SAFETENSORS_DTYPES[counts.most_common(1)[0][0]] if counts else None
