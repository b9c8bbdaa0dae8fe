"""GGUF as a weights container of the formats seam: told apart, read tensor by tensor, written by `convert`.

- `inspect_gguf`: a .gguf file's part, config and text files come from the same ``glmimage.*`` keys as a single
  safetensors file's (stored as GGUF strings), its storage is ``gguf:<qtype>`` (the type of most quantized
  tensors, K-quants included); a GGUF file of another model (a Flux or Qwen-Image DiT, a llama.cpp LLM) is
  refused by name, with the architecture its header states.
- `GgufReader`: the `TensorReader` the loaders fill models from. Inside ComfyUI, glmimage_comfy/gguf_ops.py sets
  the tensor source (`set_tensor_source`): ComfyUI-GGUF's loader, whose quantized tensors stay quantized
  (`GGMLTensor`) for its `GGMLOps` layers. Without it (the command line, plain Python) every tensor is
  dequantised once by the `gguf` package to the compute dtype: correct, but as big as a bf16 model in RAM.
- Writers ``gguf_q8_0``, ``gguf_q5_1``, ``gguf_q5_0``, ``gguf_q4_1``, ``gguf_q4_0`` for `convert` and the "Save
  GLM-Image checkpoint" node (the AR model and the DiT; a VAE or glyph encoder asked for in GGUF is written in
  bf16 safetensors, as for fp8), with its progress bar and its cancel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..errors import GlmImageInputError
from . import formats, gguf_files
from .tensor_reader import TensorInfo

#: `convert --format` names of the GGUF writers.
WRITER_NAMES = {f"gguf_{q.lower()}": q for q in gguf_files.QTYPES}
_STRING_KEYS = (formats.META_VERSION, formats.META_PART, formats.META_CONFIG, formats.META_FILES)
_PLAIN_TYPES = ("F32", "F16", "BF16")
_source: tuple[Callable, Callable] | None = None


def set_tensor_source(load: Callable | None, plain: Callable | None = None) -> None:
    """Where GGUF tensors come from inside ComfyUI (glmimage_comfy/gguf_ops.py sets it): `load(path, part)` ->
    {name: tensor} (ComfyUI-GGUF's loader) and `plain(tensor, dtype)` -> a plain tensor (its dequantisation)."""
    global _source
    _source = None if load is None else (load, plain)


def inspect_gguf(path: Path) -> formats.WeightSource:
    gguf = gguf_files._gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as err:
        raise formats.Foreign(path, f"a truncated or damaged GGUF file ({err})",
                              hint="Download or convert it again.") from err
    meta = gguf_files.read_metadata_of(reader)
    arch = meta.get("general.architecture")
    part = meta.get(formats.META_PART)
    if part not in gguf_files.ARCHITECTURES or arch != gguf_files.ARCHITECTURES[part]:
        raise formats.Foreign(path, f"a GGUF file of another model (architecture {arch!r})",
                              hint="GLM-Image's GGUF files are made by 'python -m glmimage_core convert "
                                   "--format gguf_q8_0' (or another gguf_* format).")
    try:
        config = json.loads(meta.get(formats.META_CONFIG, "{}"))
        files = json.loads(meta.get(formats.META_FILES, "{}"))
    except ValueError as err:
        raise formats.Foreign(path, f"a GLM-Image GGUF file with damaged metadata ({err})",
                              hint="Convert it again.") from err
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in ("F32", "F16", "BF16"):
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    qtype = max(counts, key=counts.get) if counts else "BF16"
    return formats.WeightSource(path=path, container="gguf", part=part, storage=f"gguf:{qtype}", config=config,
                                files=files, size=path.stat().st_size)


class GgufReader:
    """The tensors of a GLM-Image GGUF file as the layers keep them (see the module docstring)."""

    def __init__(self, source: formats.WeightSource) -> None:
        self.metadata: dict = {}
        self.path = source.path
        self._types = gguf_files.qtype_names(source.path)
        self._source = _source
        if self._source is not None:
            self._tensors = self._source[0](source.path, source.part)
        else:
            self._tensors = gguf_files.dequantized(source.path)

    def __enter__(self) -> "GgufReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keys(self) -> list[str]:
        return list(self._tensors)

    def info(self, key: str) -> TensorInfo:
        return TensorInfo(self.path, self._types[key], tuple(self._tensors[key].shape), 0, 0)

    def read(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A quantized tensor as the ComfyUI-GGUF loader gave it (a `GGMLTensor`, for a `GGMLOps` layer); the
        tensors kept in F32 / F16 / BF16 plain, in `dtype` when given (else their own)."""
        tensor = self._tensors.pop(key)
        if self._source is None:
            return tensor.to(dtype) if dtype is not None else tensor
        if self._types[key] in _PLAIN_TYPES:
            return self._source[1](tensor, dtype)
        return tensor

    def close(self) -> None:
        self._tensors = {}


def write_for(qtype: str) -> Callable:
    """The `convert` writer of one GGUF type: `(plan, target, progress_for)`, AR model and DiT only."""

    def write(plan, target: Path, progress_for=None, check_cancel: Callable[[], None] | None = None) -> None:
        if plan.part not in gguf_files.ARCHITECTURES:
            raise GlmImageInputError(f"GGUF holds the AR model and the DiT; the {formats.PART_NAMES[plan.part]} "
                                     "is written in bf16 safetensors")
        from .convert import build_model
        from .lean_load import build_empty

        linear = gguf_files.linear_weight_names(build_empty(lambda: build_model(plan.part, plan.config)))
        metadata = {**plan.metadata(), formats.META_STORAGE: f"gguf:{qtype}"}
        metadata.pop("format", None)
        with formats.open_tensors(formats.inspect(plan.folder, want=plan.part)) as reader:
            shapes = {}
            for key in reader.keys():
                info = reader.info(key)
                shapes[key] = (tuple(info.shape), {"BF16": torch.bfloat16, "F16": torch.float16}.get(
                    info.dtype, torch.float32))
            bar = progress_for(len(shapes), plan.part) if progress_for else None

            def progress(done: int, total: int) -> None:
                if bar is not None:
                    bar.update(1)
                if check_cancel is not None:
                    check_cancel()  # raises: write_gguf removes its temporary file, convert the partial one

            gguf_files.write_gguf(target, plan.part, shapes, reader.read, qtype, linear, metadata, overwrite=True,
                                  progress=progress)

    return write


formats.register_container(formats.Container(
    name="gguf", suffixes=(".gguf",), sniff=lambda head: head[:4] == b"GGUF", inspect=inspect_gguf,
    open=GgufReader))
for _name, _qtype in WRITER_NAMES.items():
    formats.register_writer(_name, write_for(_qtype))
