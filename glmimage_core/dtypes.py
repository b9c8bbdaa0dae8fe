"""Weight precision choices shared by both loaders, and the parsed `weight_dtype` the models carry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import GlmImageInputError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_CHOICES = ["auto", "bf16", "fp16", "fp32"]


def resolve_dtype(choice: str, device: torch.device, checkpoint: torch.dtype | None,
                  bf16_fallback: torch.dtype = torch.float32) -> torch.dtype:
    """auto: the checkpoint's own dtype where the device computes in it.

    bf16 stays on CPUs and on CUDA GPUs that support it; elsewhere it becomes
    `bf16_fallback` (the AR loader passes fp16, which halves a 9B model's memory;
    the decoder keeps fp32). fp16 stays on CUDA/MPS and becomes fp32 elsewhere.
    """
    if choice in DTYPES:
        return DTYPES[choice]
    if choice != "auto":
        raise GlmImageInputError(f"dtype {choice!r} is not one of {DTYPE_CHOICES}")
    wanted = checkpoint or torch.float32
    if wanted == torch.bfloat16:
        if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return wanted
        return bf16_fallback
    if wanted == torch.float16:
        return wanted if device.type in ("cuda", "mps") else torch.float32
    return wanted


@dataclass(frozen=True)
class WeightDtype:
    """How a model stores its Linear weights, parsed once from the loader's `weight_dtype` choice
    (weights.cast_layers.parse_weight_dtype): `label` is the choice as the user named it (ComfyUI's own
    names: default, fp8_e4m3fn, fp8_e5m2), `storage` its torch dtype, None for "default" (the model's dtype)."""

    label: str = "default"
    storage: torch.dtype | None = None

    @property
    def is_default(self) -> bool:
        return self.storage is None

    def __str__(self) -> str:
        return self.label


#: The model's own dtype for every weight.
DEFAULT_WEIGHTS = WeightDtype()
