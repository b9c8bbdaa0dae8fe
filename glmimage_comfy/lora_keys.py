"""LoRA key names of GLM-Image DiT LoRAs, so ComfyUI's stock LoRA loaders apply them.

ComfyUI maps LoRA keys to model weights in `comfy.lora.model_lora_keys_unet`,
which knows the diffusers-style names (`transformer.transformer_blocks.0.attn1.to_q`)
only for the model classes of ComfyUI core. For a `GlmImageModel` this adds them:
the diffusers/PEFT name `transformer.<module>`, the bare `<module>`, and kohya's
`lora_unet_<module with _>` / `lora_transformer_<module with _>`, each pointing at `diffusion_model.transformer.<module>.weight`.
The function is wrapped once (every other model gets ComfyUI's answer untouched),
which is what `LoraLoaderModelOnly`, `LoraLoader` and LoRA hooks all call.
"""

from __future__ import annotations

import comfy.lora

from .native_model import GlmImageModel

PREFIX = "diffusion_model.transformer."


def glm_lora_keys(model: GlmImageModel, key_map: dict) -> dict:
    for key in model.state_dict().keys():
        if key.startswith(PREFIX) and key.endswith(".weight"):
            module = key[len(PREFIX):-len(".weight")]
            key_map[f"transformer.{module}"] = key
            key_map[module] = key
            key_map[f"lora_unet_{module.replace('.', '_')}"] = key
            key_map[f"lora_transformer_{module.replace('.', '_')}"] = key
    return key_map


def install() -> None:
    """Teach `comfy.lora.model_lora_keys_unet` GLM-Image's names (idempotent)."""
    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "glm_image_keys", False):
        return

    def model_lora_keys_unet(model, key_map={}):
        key_map = original(model, key_map)
        if isinstance(model, GlmImageModel):
            key_map = glm_lora_keys(model, key_map)
        return key_map

    model_lora_keys_unet.glm_image_keys = True
    model_lora_keys_unet.__wrapped__ = original
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet
