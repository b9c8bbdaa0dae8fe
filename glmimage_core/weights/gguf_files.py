"""GGUF files of GLM-Image's AR model and DiT: written here with the `gguf` package, read by ComfyUI-GGUF.

The pack writes GGUF itself (`write_gguf`), tensor by tensor, with the `gguf` package's
writer and quantizers, so that a file quantized here is exactly what `gguf.quants.quantize`
makes and what ComfyUI-GGUF's `gguf_sd_loader` + `GGMLOps` read and dequantise. Tensor
names are the model's own state-dict names (transformers' for the AR model, diffusers' for
the DiT), shapes are the torch shapes (GGUF stores them reversed, ComfyUI-GGUF reverses them
back); a weight whose rows are not a whole number of quantization blocks is stored as rows
of one block and its torch shape recorded under `comfy.gguf.orig_shape.<name>` (ComfyUI-GGUF's
own convention, which its loader reads).

Which tensors are quantized (the pack's choice, `tensor_qtype`):
- only the weights of `nn.Linear` layers (the matrices that are ~99 % of both models), when
  they have at least `MIN_QUANT_ELEMENTS` elements and whole blocks;
- not the Linear layers the fp8 option keeps too (`vram_plan.AR_FP8_KEEP`: the AR model's
  output head, which picks every token, and the VQ codebook's model; `DIT_FP8_KEEP`: the DiT's
  timestep/size conditioning and its final modulation and output projection);
- everything else keeps its precision: 1-D tensors (norms, biases) and small ones in F32
  (exact for bf16 sources), embeddings (the AR text table, the DiT's prior-token table, the
  vision position table), convolutions (patch embeddings, the VQ model) and the kept Linears
  in the source dtype (BF16 / F16 / F32).
The file carries the part's config (and whatever else the caller puts in `metadata`) as
string key/values, the same keys the pack's single safetensors files carry.

Nothing here imports ComfyUI: loading through ComfyUI-GGUF lives in glmimage_comfy/gguf_ops.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from ..errors import GlmImageInputError
from ..memory import vram_plan

#: The quantizations the pack writes ("gguf-q8_0" ... on the command line), best first.
QTYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
#: Linear weights with fewer elements stay unquantized (ComfyUI-GGUF's convert.py uses the same threshold).
MIN_QUANT_ELEMENTS = 1024
#: `general.architecture` of each part's file: ComfyUI-GGUF's loader checks it against its list of
#: known architectures, so glmimage_comfy/gguf_ops.py registers these two before loading.
ARCHITECTURES = {"ar": "glm_image_ar", "dit": "glm_image_dit"}
#: Linear layers that keep their precision, per part (the same ones the fp8 option keeps).
KEEP_LINEARS = {"ar": vram_plan.AR_FP8_KEEP, "dit": vram_plan.DIT_FP8_KEEP}


def orig_shape_key(name: str) -> str:
    """The metadata key of a reshaped tensor's torch shape: ComfyUI-GGUF's convention (its loader reads it)."""
    return f"comfy.gguf.orig_shape.{name}"

_KEPT = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def _gguf():
    try:
        import gguf
    except ImportError as err:
        raise GlmImageInputError("GGUF files need the package gguf: pip install gguf (in ComfyUI's Python); "
                                 "it comes with ComfyUI-GGUF's requirements too") from err
    return gguf


def qtype_of(name: str):
    """'Q8_0' / 'q4_0' / 'gguf-q4_0' -> the `gguf.GGMLQuantizationType`; refuses types the pack does not write."""
    gguf = _gguf()
    short = name.upper().removeprefix("GGUF-")
    if short not in QTYPES:
        raise GlmImageInputError(f"GGUF type {name!r} is not one the pack writes: choose one of {list(QTYPES)}")
    return gguf.GGMLQuantizationType[short]


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is stored: its GGUF type and, for a reshaped weight, the torch shape it had."""

    name: str
    shape: tuple[int, ...]  # the torch shape
    qtype: object  # gguf.GGMLQuantizationType
    stored_shape: tuple[int, ...]  # the shape quantized (== shape unless rows were not whole blocks)

    @property
    def reshaped(self) -> bool:
        return self.stored_shape != self.shape

    @property
    def nbytes(self) -> int:
        gguf = _gguf()
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.stored_shape, dtype=np.int64)) // block * size


def linear_weight_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of the weights of `model`'s `nn.Linear` layers (a model on the meta device will do)."""
    return {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def tensor_qtype(name: str, shape: tuple[int, ...], dtype: torch.dtype, qtype, linear_weights: set[str],
                 keep: Iterable[str] = ()) -> TensorPlan:
    """The pack's choice for one tensor (see the module docstring)."""
    gguf = _gguf()
    elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    module = name.rpartition(".")[0]
    quantize = (name in linear_weights and len(shape) == 2 and elements >= MIN_QUANT_ELEMENTS
                and elements % block == 0 and not vram_plan.name_matches(module, tuple(keep)))
    if quantize:
        stored = shape if shape[-1] % block == 0 else (elements // block, block)
        return TensorPlan(name, tuple(shape), qtype, tuple(stored))
    small = len(shape) <= 1 or elements <= MIN_QUANT_ELEMENTS
    kept = "F32" if small else _KEPT.get(dtype, "F16" if dtype.itemsize <= 2 else "F32")
    return TensorPlan(name, tuple(shape), gguf.GGMLQuantizationType[kept], tuple(shape))


def plan_file(shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]], part: str, qtype,
              linear_weights: set[str]) -> list[TensorPlan]:
    """Every tensor's plan for a `part` ('ar' or 'dit') file of type `qtype`."""
    if part not in ARCHITECTURES:
        raise GlmImageInputError(f"GGUF part {part!r} is not one of {sorted(ARCHITECTURES)}")
    return [tensor_qtype(name, tuple(shape), dtype, qtype, linear_weights, KEEP_LINEARS[part])
            for name, (shape, dtype) in shapes.items()]


def file_bytes(plans: Iterable[TensorPlan]) -> int:
    """The tensor data bytes of a file (its size, less a header of a few hundred KB)."""
    return sum(plan.nbytes for plan in plans)


def encode(tensor: torch.Tensor, plan: TensorPlan) -> np.ndarray:
    """`tensor` as the bytes the file stores for `plan`: `gguf.quants.quantize` of it (BF16 from bf16 bits)."""
    gguf = _gguf()
    if plan.qtype == gguf.GGMLQuantizationType.BF16 and tensor.dtype == torch.bfloat16:
        return tensor.detach().cpu().contiguous().view(torch.int16).numpy().view(np.uint8).reshape(
            *plan.stored_shape[:-1], -1)  # the exact bits (what quantize() gives for a bf16 value)
    data = tensor.detach().to("cpu", torch.float32).numpy().reshape(plan.stored_shape)
    return gguf.quants.quantize(data, plan.qtype)


def write_gguf(path: str | os.PathLike, part: str, shapes: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
               read: Callable[[str], torch.Tensor], qtype: str, linear_weights: set[str],
               metadata: Mapping[str, str] | None = None, overwrite: bool = False,
               progress: Callable[[int, int], None] | None = None) -> list[TensorPlan]:
    """Write a GGUF file of `part` ('ar' or 'dit') quantized to `qtype` ('Q8_0', ..., see `QTYPES`).

    `shapes` lists every tensor (name -> (torch shape, dtype)) and `read(name)` gives one at a
    time, so the source is never held whole: each tensor is quantized and written, then dropped.
    The file is written under a temporary name next to `path` and renamed at the end, so a
    cancel or a full disk leaves no half-written file under the final name; an existing `path`
    is refused unless `overwrite`. `progress(done, total)` is called after every tensor.
    """
    gguf = _gguf()
    target = Path(path)
    if target.exists() and not overwrite:
        raise GlmImageInputError(f"{str(target)!r} exists: choose another name, or allow overwriting")
    plans = plan_file(shapes, part, qtype_of(qtype), linear_weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part")
    writer = gguf.GGUFWriter(temporary, arch=ARCHITECTURES[part])
    try:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype_of(qtype).name}"])
        for key, value in (metadata or {}).items():
            writer.add_string(key, str(value))
        for plan in plans:
            if plan.reshaped:
                writer.add_array(orig_shape_key(plan.name), [int(dim) for dim in plan.shape])
            byte_shape = gguf.quants.quant_shape_to_byte_shape(plan.stored_shape, plan.qtype)
            writer.add_tensor_info(plan.name, byte_shape, np.dtype(np.uint8), plan.nbytes, raw_dtype=plan.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, plan in enumerate(plans, 1):
            writer.write_tensor_data(encode(read(plan.name), plan))
            if progress is not None:
                progress(done, len(plans))
        writer.close()
        os.replace(temporary, target)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return plans


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string key/values of a GGUF file (its architecture, the pack's config keys), from its header."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as err:
        raise GlmImageInputError(f"{str(path)!r} is not a readable GGUF file ({err})") from err
    return read_metadata_of(reader)


def read_metadata_of(reader) -> dict[str, str]:
    """The string key/values of an open `gguf.GGUFReader`."""
    gguf = _gguf()
    out = {}
    for key, field in reader.fields.items():
        if field.types == [gguf.GGUFValueType.STRING]:
            out[key] = str(bytes(field.parts[field.data[-1]]), encoding="utf-8")
    return out


def dequantized(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantised by the `gguf` package itself (`gguf.quants.dequantize`), in
    float32 and its torch shape: the reference the tests hold ComfyUI-GGUF's dequantisation to."""
    gguf = _gguf()
    reader = gguf.GGUFReader(path)
    out = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(tensor.data), tensor.tensor_type)
        field = reader.get_field(orig_shape_key(tensor.name))
        shape = tuple(int(field.parts[i][0]) for i in field.data) if field is not None else \
            tuple(int(v) for v in reversed(tensor.shape))
        out[tensor.name] = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)
    return out


def qtype_names(path: str | os.PathLike) -> dict[str, str]:
    """Each tensor's GGUF type name ("Q8_0", "F32", ...)."""
    return {tensor.name: tensor.tensor_type.name for tensor in _gguf().GGUFReader(path).tensors}


def qtype_counts(path: str | os.PathLike) -> dict[str, int]:
    """How many tensors of each GGUF type a file holds (for messages and tests)."""
    gguf = _gguf()
    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts
