"""Reading safetensors one tensor at a time, by byte ranges, never mapping the file.

Why not `safe_open` or `from_pretrained`: both map the file, and every page a
tensor touched stays in the process's resident set until the whole map goes, so
converting a bf16 folder to fp8 while loading held the bf16 pages next to the
fp8 copy (issue 19: 6.1 GiB peak for 1.9 GiB kept). Here each tensor is read
with `readinto` into a buffer of its own, converted if asked, and the file pages
it came through are dropped from the page cache (`posix_fadvise DONTNEED`), so
the peak is what is kept plus one tensor in flight.

`TensorReader` is the protocol every container's reader follows (see
formats.py: GGUF's reader is another implementation of it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from ..errors import GlmImageInputError
from .files import BadHeader, safetensors_header

DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
          "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
          "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
          "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items() if dtype is not None}


class TensorInfo(NamedTuple):
    file: Path
    dtype: str  # the safetensors name ("BF16", "F8_E4M3"...) or, for GGUF, the quant type name
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class TensorReader(Protocol):
    metadata: dict

    def keys(self) -> list[str]: ...

    def info(self, key: str) -> TensorInfo: ...

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor: ...

    def close(self) -> None: ...


class SafetensorsReader:
    """The tensors of one or more safetensors files (a sharded folder), read by ranges."""

    def __init__(self, files: list[Path], drop_pages: bool = True) -> None:
        self.metadata: dict = {}
        self._index: dict[str, TensorInfo] = {}
        self._handles: dict[Path, object] = {}
        self.drop_pages = drop_pages
        for file in files:
            file = Path(file)
            handle = file.open("rb", buffering=0)
            self._handles[file] = handle
            size = file.stat().st_size
            try:
                header, raw = safetensors_header(handle, size)
            except BadHeader as err:
                self.close()
                raise GlmImageInputError(f"weights {str(file)!r} are corrupted or incomplete ({err}); "
                                         "download or convert them again") from err
            self.metadata.update(header.pop("__metadata__", None) or {})
            base = len(raw)
            for key, info in header.items():
                begin, end = info["data_offsets"]
                self._index[key] = TensorInfo(file, info["dtype"], tuple(info["shape"]), base + begin, base + end)

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keys(self) -> list[str]:
        return list(self._index)

    def info(self, key: str) -> TensorInfo:
        return self._index[key]

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor `key` in a buffer of its own; float tensors converted to `dtype` when given."""
        info = self._index[key]
        torch_dtype = DTYPES.get(info.dtype)
        if torch_dtype is None:
            raise GlmImageInputError(f"{str(info.file)!r}: tensor {key!r} has dtype {info.dtype}, which this "
                                     f"PyTorch ({torch.__version__}) cannot hold")
        buffer = torch.empty(info.nbytes, dtype=torch.uint8)
        handle = self._handles[info.file]
        handle.seek(info.start)
        view = memoryview(buffer.numpy())
        done = 0
        while done < info.nbytes:
            n = handle.readinto(view[done:])
            if not n:
                raise GlmImageInputError(f"{str(info.file)!r} ends inside tensor {key!r}: a truncated file; "
                                         "download or convert it again")
            done += n
        if self.drop_pages:
            _drop_pages(handle, info.start, info.nbytes)
        tensor = buffer.view(torch_dtype).reshape(info.shape) if info.nbytes else torch.empty(info.shape,
                                                                                              dtype=torch_dtype)
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype and tensor.element_size() > 1:
            tensor = tensor.to(dtype)
        return tensor

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def _drop_pages(handle, start: int, length: int) -> None:
    """Tell the kernel the file pages just read are not needed again (they were copied out)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is not None and length:
        try:
            advise(handle.fileno(), start, length, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
