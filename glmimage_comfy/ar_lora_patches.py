"""PEFT LoRAs on the AR model through ComfyUI's own patch mechanism: the cached base model is never changed.

The AR model is managed by a ComfyUI `ModelPatcher` (comfy_host). A LoRA'd AR model is a
copy of the `ARModel` payload (same module, processor and lock) that lists the LoRA and its strength
(`ARModel.loras`: data only); when the generate node places it, the host loads a clone of the base's
patcher with the LoRA's layers added as patches (comfy_host: one clone per combination) (`comfy.lora.load_lora` builds ComfyUI's own LoRA
weight adapters from `<module>.lora_A/.lora_B/.alpha`, `add_patches` records them at a strength).
ComfyUI applies patches when it loads that patcher (`load_models_gpu`, which the generate node
calls) and restores the base weights when it loads a clone with other patches or unloads it, so
graph branches with and without the LoRA alternate correctly; streamed cast layers get the same
patches per forward. Several LoRAs chain: a clone of a LoRA'd patcher keeps its patches.

The dropdown lists ComfyUI's `loras/` files and the adapters under `models/glm_image/`
(marked [glm_image]).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..glmimage_core.ar.lora_adapters import ARLora, find_adapters, read_ar_lora
from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.weights.model_folders import is_model_folder, search_roots
from ..glmimage_core.payloads import ARModel

NO_LORAS = "(no LoRAs in models/loras or models/glm_image)"
GLM_IMAGE_MARK = " [glm_image]"
#: Where the AR model sits in its patcher's module (comfy_host wraps it in a ModuleDict under "model").
HOLDER_PREFIX = "model."


def lora_choices() -> list[str]:
    """ComfyUI's LoRA files (models/loras/, as its own LoRA loaders list them; a PEFT folder shows as
    <folder>/adapter_model.safetensors) and the adapters under models/glm_image/, marked [glm_image]."""
    import folder_paths

    names = list(folder_paths.get_filename_list("loras"))
    for root in search_roots():
        names += [name + GLM_IMAGE_MARK for name in find_adapters(root, is_model_folder)
                  if name + GLM_IMAGE_MARK not in names]
    return names or [NO_LORAS]


def lora_path(lora_name: str) -> Path:
    """The file a dropdown entry names (a linked value is checked the same way: inside the two folders only)."""
    import folder_paths

    if lora_name == NO_LORAS:
        raise GlmImageInputError("lora_name: no LoRA found in models/loras/ or models/glm_image/; put the "
                                 "adapter folder (adapter_model.safetensors + adapter_config.json) there and "
                                 "refresh the page (R)")
    if lora_name.endswith(GLM_IMAGE_MARK):
        relative = lora_name[:-len(GLM_IMAGE_MARK)]
        for root in search_roots():
            if relative in find_adapters(root, is_model_folder):
                return root / relative
        raise GlmImageInputError(f"lora_name: {relative!r} is not an adapter under models/glm_image/ (any more); "
                                 "refresh the page (R) and choose again")
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise GlmImageInputError(f"lora_name: {lora_name!r} is not in models/loras/; refresh the page (R) "
                                 "and choose again")
    return Path(path)


def comfy_patches(lora: ARLora) -> dict:
    """The LoRA as ComfyUI patches on the patcher's weight keys: `comfy.lora.load_lora` over `<module>.lora_A
    / .lora_B / .alpha`, with alpha = PEFT's scale x rank (ComfyUI scales by alpha / rank)."""
    import comfy.lora

    state, keys = {}, {}
    for layer in lora.layers:
        state[f"{layer.module}.lora_A.weight"] = layer.down
        state[f"{layer.module}.lora_B.weight"] = layer.up
        state[f"{layer.module}.alpha"] = torch.tensor(layer.scale * layer.rank, dtype=torch.float64)
        keys[layer.module] = f"{HOLDER_PREFIX}{layer.module}.weight"
    return comfy.lora.load_lora(state, keys)


def with_ar_lora(ar: ARModel, lora: ARLora, strength: float) -> ARModel:
    """A copy of `ar` whose ComfyUI patcher carries `lora` at `strength`; `ar` itself is unchanged."""
    if ar.quantization != "none":
        raise GlmImageInputError(f"ar_model: a LoRA cannot patch bitsandbytes {ar.quantization} weights; load "
                                 "the AR model with quantization none (weight_dtype fp8_e4m3fn also saves VRAM "
                                 "and takes LoRAs)")
    # same module, processor and lock (one generation at a time on these weights); the host patches a clone
    return dataclasses.replace(ar, loras=ar.loras + ((lora, float(strength)),))


def load_ar_lora(ar: ARModel, lora_name: str, strength: float) -> tuple[ARModel, str]:
    """(the AR model with the LoRA named in the dropdown applied, what was applied)."""
    lora = read_ar_lora(lora_path(lora_name), ar.model, name=f"lora_name {lora_name!r}")
    return with_ar_lora(ar, lora, strength), f"AR LoRA {lora_name} at strength {strength:g}: {lora.describe()}"
