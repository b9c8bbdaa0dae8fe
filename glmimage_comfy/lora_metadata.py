"""The strength a diffusers/PEFT LoRA file asks for, as `.alpha` tensors that ComfyUI's LoRA code reads.

A LoRA trained with diffusers/PEFT scales its update by `lora_alpha / r` (or
`lora_alpha / sqrt(r)` with rsLoRA), and diffusers keeps `lora_alpha` (with
per-module `alpha_pattern` / `rank_pattern`) only in the safetensors metadata
`lora_adapter_metadata`, as JSON: `{"transformer.r": 4, "transformer.lora_alpha": 8, ...}`
when saved through a pipeline's `save_lora_weights(transformer_lora_adapter_metadata=...)`,
or without the `transformer.` prefix when saved through the model's own
`save_lora_adapter`. ComfyUI reads a LoRA's alpha only from `<module>.alpha`
keys (`comfy.lora.load_lora`; no key = alpha equal to the rank = scale 1), so
such a file renders in ComfyUI at `r / lora_alpha` times the strength it has in
diffusers. `with_peft_alphas` adds the `.alpha` keys that give diffusers' scale.
"""

from __future__ import annotations

import json
import math

import torch

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.weights.peft import pattern_value

METADATA_KEY = "lora_adapter_metadata"
PREFIX = "transformer"
_DOWN = ".lora_A.weight"


def adapter_config(metadata: dict | None, name: str = "lora") -> dict | None:
    """The DiT's PEFT LoraConfig fields from a safetensors file's metadata, or None when it has none."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise GlmImageInputError(f"{name}: its '{METADATA_KEY}' metadata is not JSON ({err}); diffusers writes "
                                 "a JSON object of the LoRA's settings there (r, lora_alpha, ...)") from err
    if not isinstance(config, dict):
        raise GlmImageInputError(f"{name}: its '{METADATA_KEY}' metadata is a {type(config).__name__}, not the "
                                 "JSON object of LoRA settings (r, lora_alpha, ...) diffusers writes")
    scoped = {key[len(PREFIX) + 1:]: value for key, value in config.items() if key.startswith(PREFIX + ".")}
    if scoped:  # a pipeline's save_lora_weights: one entry per component, prefixed
        return scoped
    return config if "lora_alpha" in config or "alpha_pattern" in config else None


def _number(value, what: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GlmImageInputError(f"{name}: {what} in its '{METADATA_KEY}' metadata is {value!r}; it must be a "
                                 "number (the LoRA alpha diffusers trained it with)")
    return float(value)


def with_peft_alphas(lora: dict, metadata: dict | None, name: str = "lora") -> tuple[dict, str | None]:
    """`lora` plus a `<module>.alpha` tensor per diffusers/PEFT LoRA module, so that ComfyUI's scale
    (alpha / rank) is diffusers' (lora_alpha / r, per-module alpha_pattern, rsLoRA's / sqrt(r)).

    Returns (state dict, what was done, or None when the file has no such metadata). Modules that already
    carry an `.alpha` key keep it; the file's tensors are not changed."""
    config = adapter_config(metadata, name)
    if config is None:
        return lora, None
    default = config.get("lora_alpha")
    alpha_pattern = config.get("alpha_pattern") or {}
    if not isinstance(alpha_pattern, dict):
        raise GlmImageInputError(f"{name}: alpha_pattern in its '{METADATA_KEY}' metadata must map module names "
                                 f"to alphas, not {alpha_pattern!r}")
    rslora = bool(config.get("use_rslora", False))
    out = dict(lora)
    scales = set()
    for key, down in lora.items():
        if not key.endswith(_DOWN) or not isinstance(down, torch.Tensor) or down.ndim < 2:
            continue
        prefix = key[:-len(_DOWN)]
        if prefix + ".alpha" in lora:
            continue
        module = prefix[len(PREFIX) + 1:] if prefix.startswith(PREFIX + ".") else prefix
        alpha = pattern_value(alpha_pattern, module)
        if alpha is None:
            if default is None:
                continue  # neither says: PEFT's default alpha equals r, as ComfyUI assumes
            alpha = default
        alpha = _number(alpha, f"the alpha of {module}", name)
        rank = down.shape[0]
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        out[prefix + ".alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
        scales.add(round(scale, 6))
    if not scales:
        return lora, None
    shown = ", ".join(f"{s:g}" for s in sorted(scales))
    note = (f"{name}: diffusers' LoRA scale from its metadata (lora_alpha / r{' (rsLoRA: / sqrt(r))' if rslora else ''})"
            f" = {shown}, applied per module as ComfyUI .alpha keys")
    return out, note
