"""ComfyUI cast layers for models that transformers / diffusers built: what lets ComfyUI stream them and keep fp8.

ComfyUI's `ModelPatcher` can load a model partially (stream what does not fit in
VRAM, layer by layer, on every forward) only for leaf modules that carry
`comfy_cast_weights`, i.e. ComfyUI's own layer classes from `comfy.ops`. The
upstream classes stay the source of truth for the architecture and the weights:
after loading, each weight-holding leaf of a known kind gets ComfyUI's class by
swapping `__class__` (its parameters, its name in the state dict and every
other module's forward stay exactly as they were), the same move ComfyUI makes
for its own models when it builds them with `operations=comfy.ops...`.

- Linear, Conv2d, LayerNorm, GroupNorm, Embedding -> the classes of an operations
  class: ComfyUI's `comfy.ops.disable_weight_init` here (plain torch maths while
  resident; cast per forward only when ComfyUI streams them), or any other family
  built on `comfy.ops` (`manual_cast`, ComfyUI-GGUF's `GGMLOps`, ...); Linear
  weights stored in fp8 get the Linear of `fp8_operations` (`comfy.ops.manual_cast`:
  cast to the compute dtype on every forward, as ComfyUI's own `weight_dtype` option does).
- GLM-Image's RMSNorm and T5's LayerNorm (same formula) -> a castable subclass
  that casts the weight through ComfyUI and then runs the upstream formula (fp32
  variance) unchanged.
- The AR model's text embedding table (1.28 GiB, one row read per token) can be
  replaced by `HostEmbedding`, which keeps the table in host RAM and sends only
  the rows a step needs: it never occupies VRAM and ComfyUI never streams it.

Nothing here imports ComfyUI: the caller passes the operations classes in.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..dtypes import DEFAULT_WEIGHTS, WeightDtype
from ..errors import GlmImageInputError

#: ComfyUI's own names for the weight storage option (its "Load Diffusion Model" node's weight_dtype).
WEIGHT_DTYPE_CHOICES = ["default", "fp8_e4m3fn", "fp8_e5m2"]
_FP8_NAMES = {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def resolve_weight_dtype(choice: str) -> torch.dtype | None:
    """`weight_dtype` -> the torch storage dtype for Linear weights, or None for "default" (the model's dtype)."""
    if choice == "default":
        return None
    if choice not in _FP8_NAMES:
        raise GlmImageInputError(f"weight_dtype {choice!r} is not one of {WEIGHT_DTYPE_CHOICES}")
    dtype = getattr(torch, _FP8_NAMES[choice], None)
    if dtype is None:
        raise GlmImageInputError(f"weight_dtype {choice} needs a PyTorch with float8 types (2.1 or newer); this "
                                 f"PyTorch {torch.__version__} has none: choose weight_dtype default")
    return dtype


def parse_weight_dtype(weight_dtype: str | WeightDtype, fp8_possible: bool,
                       quantization: str = "none") -> WeightDtype:
    """`weight_dtype` as the loader received it -> the `WeightDtype` the model carries from then on: the one place
    it is parsed (`resolve_weight_dtype`) and checked. Refused next to a bitsandbytes `quantization` (both shrink
    the weights) and where the host has no cast layers for fp8 weights (`fp8_possible`: plain Python has none;
    they are ComfyUI's). A `WeightDtype` (parsed where a loader received the string) is returned as it is."""
    if isinstance(weight_dtype, WeightDtype):
        return weight_dtype
    label = weight_dtype
    fp8_dtype = resolve_weight_dtype(label)
    if fp8_dtype is not None and quantization != "none":
        raise GlmImageInputError(f"weight_dtype {label} and quantization {quantization} both shrink the "
                                 "weights: choose one (quantization none, or weight_dtype default)")
    if fp8_dtype is not None and not fp8_possible:
        raise GlmImageInputError(f"weight_dtype {label} uses ComfyUI's cast layers: it works inside "
                                 "ComfyUI only; choose weight_dtype default here")
    return WeightDtype(label, fp8_dtype) if fp8_dtype is not None else DEFAULT_WEIGHTS


@dataclass
class CastSummary:
    """What `make_castable` changed: layer classes swapped, Linear weights put in fp8, leaves it left alone."""

    swapped: Counter = field(default_factory=Counter)
    fp8_layers: int = 0
    fp8_bytes: int = 0  # bytes those weights take now (half of bf16)
    not_castable: list[str] = field(default_factory=list)  # weight-holding leaves ComfyUI cannot stream


def _rms_norm_forward(ops):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not (self.comfy_cast_weights or self.weight_function):
            return super(type(self), self).forward(hidden_states)
        weight, _ = ops_cast(ops, self, hidden_states)
        return self._normalise(hidden_states, weight)

    return forward


def ops_cast(ops, module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The module's weight (and bias) on `like`'s device, in the weight's own dtype, via ComfyUI's cast."""
    return ops.cast_bias_weight(module, like, dtype=module.weight.dtype, device=like.device)


def _glm_rms_normalise(self, hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # transformers' GlmImageRMSNorm.forward with `self.weight` replaced by the cast weight.
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return weight * hidden_states.to(input_dtype)


def _t5_normalise(self, hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # transformers' T5LayerNorm.forward with `self.weight` replaced by the cast weight.
    variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    if weight.dtype in (torch.float16, torch.bfloat16):
        hidden_states = hidden_states.to(weight.dtype)
    return weight * hidden_states


def _cast_mixin(operations) -> type:
    """ComfyUI's `CastWeightBiasOp` under `operations`' Linear: the deepest base that declares `comfy_cast_weights`."""
    return [c for c in operations.Linear.__mro__ if "comfy_cast_weights" in vars(c)][-1]


@functools.lru_cache(maxsize=None)
def _norm_classes(operations) -> dict[type, type]:
    """Castable subclasses of the upstream RMS norms, built once per operations class.

    They cast through the `comfy.ops` module that defines the operations' cast mixin."""
    mixin = _cast_mixin(operations)
    ops = sys.modules[mixin.__module__]
    classes: dict[type, type] = {}
    upstream = []
    try:
        from transformers.models.glm_image.modeling_glm_image import GlmImageRMSNorm
        upstream.append((GlmImageRMSNorm, _glm_rms_normalise))
    except ImportError:  # pragma: no cover - transformers without GLM-Image is refused earlier
        pass
    from transformers.models.t5.modeling_t5 import T5LayerNorm
    upstream.append((T5LayerNorm, _t5_normalise))
    for base, normalise in upstream:
        classes[base] = type(f"Castable{base.__name__}", (base, mixin),
                             {"forward": _rms_norm_forward(ops), "_normalise": normalise,
                              "__module__": __name__})
    return classes


def _plain_classes(layers) -> dict[type, type]:
    return {torch.nn.Linear: layers.Linear, torch.nn.Conv2d: layers.Conv2d, torch.nn.LayerNorm: layers.LayerNorm,
            torch.nn.GroupNorm: layers.GroupNorm, torch.nn.Embedding: layers.Embedding}


def make_castable(model: torch.nn.Module, operations, fp8_dtype: torch.dtype | None = None,
                  keep_dtype: Callable[[str], bool] = lambda name: False, fp8_operations=None) -> CastSummary:
    """Give `model`'s weight-holding leaves ComfyUI's layer classes, in place; optionally fp8 Linear weights.

    `operations` is a ComfyUI operations class (`comfy.ops.disable_weight_init`, or
    another family built on `comfy.ops`): the leaves get its Linear, Conv2d, LayerNorm,
    GroupNorm and Embedding. With `fp8_dtype`, every `nn.Linear` whose qualified
    name `keep_dtype` does not claim gets its weight stored in that dtype (biases
    stay) and the Linear of `fp8_operations` (`comfy.ops.manual_cast`; default:
    `operations`). Only exact upstream classes
    are swapped (a subclass may have its own forward); other leaves with weights
    are listed in `not_castable` so the caller can keep them resident.
    """
    summary = CastSummary()
    mapping = {**_plain_classes(operations), **_norm_classes(operations)}
    castable = tuple(set(mapping.values()))
    for name, module in model.named_modules():
        if isinstance(module, castable) or isinstance(module, HostEmbedding):
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        target = mapping.get(type(module))
        if target is None:
            summary.not_castable.append(name)
            continue
        stored_fp8 = target is operations.Linear and module.weight.element_size() == 1  # an fp8 file's layer
        if (stored_fp8 or fp8_dtype is not None) and target is operations.Linear and not keep_dtype(name):
            if not stored_fp8:
                info = torch.finfo(fp8_dtype)
                module.weight = torch.nn.Parameter(module.weight.data.clamp(info.min, info.max).to(fp8_dtype),
                                                   requires_grad=False)
            target = (fp8_operations or operations).Linear
            if "weight_scale" in module._buffers:
                target = scaled_fp8_linear(fp8_operations or operations)
            summary.fp8_layers += 1
            summary.fp8_bytes += module.weight.numel() * module.weight.element_size()
        elif stored_fp8:
            target = scaled_fp8_linear(fp8_operations or operations) if "weight_scale" in module._buffers \
                else (fp8_operations or operations).Linear
        module.__class__ = target
        if "bias" not in module._parameters and not hasattr(module, "bias"):
            module.bias = None  # ComfyUI's cast reads .bias (Embedding and the norms have none)
        summary.swapped[target.__name__] += 1
    return summary


@functools.lru_cache(maxsize=None)
def scaled_fp8_linear(operations) -> type:
    """`operations`' Linear for fp8 weights with a per-tensor `weight_scale` buffer (fp8 files, fp8.py): the
    weight is cast by ComfyUI, then scaled, as ComfyUI's own scaled fp8 layers do; `convert_weight` /
    `set_weight` let ComfyUI's LoRA patches work on the scaled values (its patcher looks these names up)."""
    ops = sys.modules[_cast_mixin(operations).__module__]

    def forward_comfy_cast_weights(self, input, *args, **kwargs):
        weight, bias = ops.cast_bias_weight(self, input)
        return F.linear(input, weight * self.weight_scale.to(device=weight.device, dtype=weight.dtype), bias)

    def convert_weight(self, weight, inplace=False, **kwargs):
        scale = self.weight_scale.to(device=weight.device)
        if inplace:
            weight *= scale.to(weight.dtype)
            return weight
        return weight.to(torch.float32) * scale

    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        info = torch.finfo(self.weight.dtype)
        scale = self.weight_scale.to(device=weight.device, dtype=torch.float32)
        weight = (weight.to(torch.float32) / scale).clamp(info.min, info.max).to(self.weight.dtype)
        if return_weight:
            return weight
        if inplace_update:
            self.weight.data.copy_(weight)
        else:
            self.weight = torch.nn.Parameter(weight, requires_grad=False)

    return type("ScaledFP8Linear", (operations.Linear,), {
        "forward_comfy_cast_weights": forward_comfy_cast_weights, "convert_weight": convert_weight,
        "set_weight": set_weight, "__module__": __name__})


class HostEmbedding(torch.nn.Module):
    """An embedding table kept in host RAM: each step looks its rows up there and sends only those rows.

    GLM-Image's text embedding table is 1.28 GiB in bf16 but a sampling step
    reads one row of it. The table is held as a plain attribute, not a
    parameter, so `.to(device)` and ComfyUI's model manager (which count and move
    the state dict) leave it in RAM; the output lands on the ids' device.
    """

    def __init__(self, embedding: torch.nn.Embedding, host: torch.device | str = "cpu") -> None:
        super().__init__()
        self.num_embeddings = embedding.num_embeddings
        self.embedding_dim = embedding.embedding_dim
        self.padding_idx = embedding.padding_idx
        self.__dict__["host_weight"] = embedding.weight.detach().to(host)

    @property
    def weight(self) -> torch.Tensor:
        return self.host_weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids.to(self.host_weight.device), self.host_weight, self.padding_idx)
        return rows.to(input_ids.device)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, host={self.host_weight.device}"


def keep_embeddings_on_host(model: torch.nn.Module, names: list[str], host: torch.device | str = "cpu") -> int:
    """Replace the embeddings at `names` (dotted paths) by `HostEmbedding`s; returns the bytes taken off VRAM."""
    moved = 0
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        embedding = getattr(parent, child)
        if isinstance(embedding, HostEmbedding):
            continue
        moved += embedding.weight.numel() * embedding.weight.element_size()
        setattr(parent, child, HostEmbedding(embedding, host))
    return moved
