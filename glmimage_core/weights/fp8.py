"""fp8 weights in ComfyUI's two file conventions, and the conversions to fp8 the loaders and the writer share.

ComfyUI 0.33 (comfy/ops.py `_load_from_state_dict`, comfy/utils.py `convert_old_quants`) reads, per Linear:

- ``comfy_quant`` (0.33's own): ``<layer>.weight`` in fp8, ``<layer>.weight_scale`` (float32 scalar; the weight
  is ``weight.to(compute) * weight_scale``), ``<layer>.comfy_quant`` (uint8 bytes of the JSON
  ``{"format": "float8_e4m3fn"}``); the layers may instead be listed in the ``_quantization_metadata`` metadata
  entry (``{"format_version": "1.0", "layers": {layer: {"format": ...}}}``);
- ``scaled_fp8`` (the older form 0.33 still converts, and 0.3.75's): a ``scaled_fp8`` marker tensor (fp8, empty),
  ``<layer>.weight`` in fp8 and ``<layer>.scale_weight`` (float32 scalar), optionally ``<layer>.scale_input``.

The pack writes both (per-tensor absmax scales: the largest weight maps to the fp8 type's largest value, so small
GLM-Image weights keep their precision) and reads both, plus unscaled fp8 weights (scale 1). Reading does not
use ComfyUI's quantized tensors, so the same files load on ComfyUI 0.3.75 and 0.33.0 alike.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..errors import GlmImageInputError

FP8_DTYPES = {name: getattr(torch, attr) for name, attr in
              (("fp8_e4m3fn", "float8_e4m3fn"), ("fp8_e5m2", "float8_e5m2")) if hasattr(torch, attr)}
COMFY_FORMATS = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}
CONVENTIONS = ("comfy_quant", "scaled_fp8")
_STORED = {"F8_E4M3": "fp8_e4m3fn", "F8_E5M2": "fp8_e5m2", "BF16": "bf16", "F16": "fp16", "F32": "fp32"}
_ROWS_PER_CHUNK = 1024  # rows converted at once: caps the float32 temporaries at a few tens of MB


def storage_of(header: dict, metadata: dict) -> tuple[str, str | None]:
    """(storage, convention) of a safetensors header: fp8 with its convention, or the float dtype most tensors use."""
    counts = Counter(_STORED[info["dtype"]] for key, info in header.items()
                     if info.get("dtype") in _STORED and key.endswith(".weight"))
    fp8 = Counter({name: n for name, n in counts.items() if name.startswith("fp8")})
    if "scaled_fp8" in header:
        marker = _STORED.get(header["scaled_fp8"].get("dtype"), "fp8_e4m3fn")
        return (marker if marker.startswith("fp8") else "fp8_e4m3fn"), "scaled_fp8"
    if any(key.endswith(".comfy_quant") for key in header) or "_quantization_metadata" in metadata:
        return (fp8.most_common(1)[0][0] if fp8 else "fp8_e4m3fn"), "comfy_quant"
    if fp8:
        return fp8.most_common(1)[0][0], None
    return (counts.most_common(1)[0][0] if counts else "bf16"), None


@dataclass
class QuantLayers:
    """Which Linear layers of a file are fp8, where each one's scale is, and the keys that are not parameters."""

    scales: dict[str, str | None] = field(default_factory=dict)  # layer -> its scale's key (None: scale 1)
    extra: set[str] = field(default_factory=set)  # keys that describe quantization, not parameters


def quant_layers(reader, convention: str | None) -> QuantLayers:
    """The fp8 layers of an opened file (`TensorReader`), read from its small tensors and metadata only."""
    found = QuantLayers()
    keys = set(reader.keys())
    if convention == "comfy_quant":
        layers = dict((json.loads(reader.metadata["_quantization_metadata"]).get("layers") or {})
                      if "_quantization_metadata" in reader.metadata else {})
        for key in keys:
            if key.endswith(".comfy_quant"):
                layers[key[:-len(".comfy_quant")]] = json.loads(bytes(reader.read(key).tolist()).decode("utf-8"))
                found.extra.add(key)
        for layer, conf in layers.items():
            fmt = (conf or {}).get("format")
            if fmt not in COMFY_FORMATS.values():
                raise GlmImageInputError(f"layer {layer!r} of {str(reader.info(layer + '.weight').file)!r} is "
                                         f"quantized as {fmt!r}; GLM-Image files load float8_e4m3fn / float8_e5m2 "
                                         "(convert the model again with 'python -m glmimage_core convert')")
            found.scales[layer] = layer + ".weight_scale" if layer + ".weight_scale" in keys else None
        found.extra |= {k for k in keys if k.endswith(".input_scale")}
    elif convention == "scaled_fp8":
        found.extra.add("scaled_fp8")
        for key in keys:
            if key.endswith(".scale_weight"):
                found.scales[key[:-len(".scale_weight")]] = key
            elif key.endswith(".scale_input"):
                found.extra.add(key)
    for key in keys:  # unscaled fp8 weights (ComfyUI's weight_dtype files): scale 1
        if key.endswith(".weight") and reader.info(key).dtype.startswith("F8") and key[:-7] not in found.scales:
            found.scales[key[:-7]] = None
    found.extra |= {key for key in found.scales.values() if key}
    return found


def fp8_dtype(storage: str) -> torch.dtype:
    if storage not in FP8_DTYPES:
        raise GlmImageInputError(f"{storage} needs a PyTorch with float8 types (2.1 or newer); this PyTorch "
                                 f"{torch.__version__} has none")
    return FP8_DTYPES[storage]


def cast_fp8(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight` clamped to `dtype`'s range and rounded to it, unscaled (ComfyUI's weight_dtype option), by rows."""
    info = torch.finfo(dtype)
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    for rows in _chunks(weight):
        out[rows] = weight[rows].clamp(info.min, info.max).to(dtype)
    return out


def quantize(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scale): per-tensor absmax scaling, `weight ~= q.float() * scale`, converted by rows."""
    low, high = torch.aminmax(weight)
    absmax = max(-float(low), float(high))
    scale = torch.tensor(absmax / torch.finfo(dtype).max if absmax > 0 else 1.0, dtype=torch.float32)
    info = torch.finfo(dtype)
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    for rows in _chunks(weight):
        out[rows] = (weight[rows].float() / scale).clamp(info.min, info.max).to(dtype)
    return out, scale


def dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The compute-dtype weight an fp8 layer uses: ComfyUI's `weight.to(dtype) * scale.to(dtype)`."""
    weight = weight.to(dtype)
    return weight if scale is None else weight * scale.to(device=weight.device, dtype=dtype)


def layer_tensors(layer: str, q: torch.Tensor, scale: torch.Tensor, storage: str, convention: str) -> dict:
    """The tensors one quantized Linear weight is written as, in `convention`."""
    if convention == "comfy_quant":
        conf = json.dumps({"format": COMFY_FORMATS[storage]}).encode("utf-8")
        return {f"{layer}.weight": q, f"{layer}.weight_scale": scale.reshape(()).float(),
                f"{layer}.comfy_quant": torch.tensor(list(conf), dtype=torch.uint8)}
    if convention == "scaled_fp8":
        return {f"{layer}.weight": q, f"{layer}.scale_weight": scale.reshape(()).float()}
    raise GlmImageInputError(f"fp8 convention {convention!r} is not one of {list(CONVENTIONS)}")


def marker_tensors(storage: str, convention: str) -> dict:
    """File-wide tensors of a convention: the `scaled_fp8` marker (its dtype says which fp8)."""
    return {"scaled_fp8": torch.empty(0, dtype=FP8_DTYPES[storage])} if convention == "scaled_fp8" else {}


def _chunks(weight: torch.Tensor):
    rows = weight.shape[0] if weight.dim() else 1
    if weight.dim() == 0:
        yield ...
        return
    for start in range(0, rows, _ROWS_PER_CHUNK):
        yield slice(start, min(rows, start + _ROWS_PER_CHUNK))
