"""Loading a part straight into its layers, one tensor at a time, never wider than it is kept.

The upstream class (transformers / diffusers) is built with its parameters on the
`meta` device (accelerate's `init_empty_weights`, buffers real: rotary tables and
the like are computed by the constructor as always), then every tensor is read
from its `TensorReader` and put in place:

- an fp8 file's Linear weights stay fp8 (their scales go to a `weight_scale`
  buffer; cast_layers gives those layers the scaled fp8 Linear);
- with a storage dtype asked for (`weight_dtype fp8_*` on a bf16 folder) each
  Linear weight is rounded to it as soon as it is read (the same rounding
  cast_layers applied to the whole model before), so the bf16 copy of one
  tensor at a time is all that is ever held next to what is kept;
- every other float tensor arrives in the compute dtype.

The caller then prepares the model as before (`prepare_ar_model`, `prepare_dit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import GlmImageInputError
from .fp8 import QuantLayers, cast_fp8


@dataclass
class FillReport:
    tensors: int = 0
    fp8_layers: int = 0
    unexpected: list[str] = field(default_factory=list)


def build_empty(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`make()` with its parameters on `meta` (no memory) and its buffers real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return make()


def fill(model: torch.nn.Module, reader, name: str, dtype: torch.dtype, store: torch.dtype | None = None,
         keep: Callable[[str], bool] = lambda layer: False, quant: QuantLayers | None = None,
         keep_fp32: tuple[str, ...] = (), progress=None) -> FillReport:
    """Read every tensor of `reader` into `model` (built by `build_empty`); `name` names the weights in messages.

    `store`: the fp8 dtype plain Linear weights are rounded to as they are read (layers `keep` claims stay);
    `quant`: the fp8 layers of an fp8 file; `keep_fp32`: module names the upstream class keeps in float32."""
    modules = dict(model.named_modules())
    quant = quant or QuantLayers()
    report = FillReport()
    with torch.no_grad():
        for key in reader.keys():
            if key in quant.extra:
                continue
            module_name, _, leaf = key.rpartition(".")
            module = modules.get(module_name)
            if module is None or (leaf not in module._parameters and leaf not in module._buffers):
                report.unexpected.append(key)
                continue
            current = getattr(module, leaf)
            info = reader.info(key)
            if tuple(info.shape) != tuple(current.shape):
                raise GlmImageInputError(f"{name}: tensor {key!r} has shape {list(info.shape)} where the config "
                                         f"builds {list(current.shape)}: the file and its config disagree")
            if leaf == "weight" and module_name in quant.scales:
                tensor = reader.read(key)
                scale_key = quant.scales[module_name]
                scale = reader.read(scale_key).float().reshape(()) if scale_key else None
                if scale is not None and float(scale) != 1.0:
                    module.register_buffer("weight_scale", scale)
                report.fp8_layers += 1
            elif store is not None and leaf == "weight" and type(module) is torch.nn.Linear and not keep(module_name):
                tensor = cast_fp8(reader.read(key, dtype), store)  # as the whole-model conversion: dtype, then fp8
                report.fp8_layers += 1
            else:
                wanted = torch.float32 if any(part in module_name.split(".") for part in keep_fp32) else dtype
                tensor = reader.read(key, wanted if current.is_floating_point() else None)
            if leaf in module._parameters:
                module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
            else:
                module._buffers[leaf] = tensor
            report.tensors += 1
            if progress is not None:
                progress.update(1)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise GlmImageInputError(f"{name} lacks {len(missing)} tensor(s) the model needs, e.g. {missing[:3]}: an "
                                 "incomplete or different file; download or convert it again")
    return report
