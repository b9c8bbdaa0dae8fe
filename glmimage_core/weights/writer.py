"""Writing a safetensors file tensor by tensor, so that a cancel or a full disk never leaves half a file.

The header is laid out first from the planned (name, dtype, shape) of every
tensor, then each tensor is produced (read and converted from its source) and
written in order, so a 13 GB DiT is converted holding one tensor at a time. The
bytes go to a hidden temporary name in the target's own folder; only a complete
file, flushed and `fsync`ed, gets the final name (a hard link that fails if
the name was taken meanwhile, or `os.replace` when overwriting was asked for).
Anything that stops the writing (an exception, ComfyUI's cancel, ENOSPC) removes
the temporary file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import GlmImageInputError
from .tensor_reader import NAMES

_ALIGN = 8


def planned_entry(tensor_or_spec) -> tuple[str, tuple[int, ...]]:
    if isinstance(tensor_or_spec, torch.Tensor):
        return NAMES[tensor_or_spec.dtype], tuple(tensor_or_spec.shape)
    dtype, shape = tensor_or_spec
    return (NAMES[dtype] if isinstance(dtype, torch.dtype) else dtype), tuple(shape)


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    from .tensor_reader import DTYPES

    count = 1
    for n in shape:
        count *= n
    return count * torch.empty((), dtype=DTYPES[dtype]).element_size()


def check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise GlmImageInputError(f"{str(target)!r} exists already: choose another name, delete it, or ask to "
                                 "overwrite it (--overwrite / the node's overwrite switch)")


def write_file(target: str | Path, plan: Iterable[tuple[str, object]], produce: Callable[[str], torch.Tensor],
               metadata: dict[str, str], overwrite: bool = False, progress=None,
               check_cancel: Callable[[], None] | None = None) -> Path:
    """Write `target` with the tensors `plan` lists ((key, (dtype, shape)) in file order), each made by
    `produce(key)` just before it is written; returns the path. See the module docstring for the guarantees."""
    target = Path(target)
    check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    entries = [(key, *planned_entry(spec)) for key, spec in plan]
    header: dict = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for key, dtype, shape in entries:
        size = _nbytes(dtype, shape)
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    temp = target.parent / f".{target.name}.{os.getpid()}.partial"
    try:
        with temp.open("wb") as handle:
            handle.write(len(raw).to_bytes(8, "little") + raw)
            for key, dtype, shape in entries:
                if check_cancel is not None:
                    check_cancel()
                tensor = produce(key)
                if planned_entry(tensor) != (dtype, shape):
                    raise GlmImageInputError(f"writing {target.name}: tensor {key!r} came as "
                                             f"{planned_entry(tensor)}, the plan said {(dtype, shape)}")
                _write_tensor(handle, tensor)
                del tensor
                if progress is not None:
                    progress.update(1)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temp, target, overwrite)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def _write_tensor(handle, tensor: torch.Tensor) -> None:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel():
        handle.write(memoryview(flat.view(torch.uint8).numpy()))


def _publish(temp: Path, target: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp, target)
        return
    try:
        os.link(temp, target)  # fails if the name was taken while writing: never replace a file not asked to
    except FileExistsError as err:
        raise GlmImageInputError(f"{str(target)!r} appeared while converting: not overwritten") from err
    except OSError:  # file systems without hard links
        check_target(target, overwrite)
        os.replace(temp, target)
        return
    temp.unlink()
