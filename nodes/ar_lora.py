"""Load GLM-Image AR LoRA: a PEFT adapter on the AR model, at a strength, without changing the cached base model."""

from __future__ import annotations

from ..glmimage_comfy.ar_lora_patches import load_ar_lora, lora_choices
from .api import io
from .messages import show_message
from .sockets import CATEGORY, GlmImageAR


class GLMImageARLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageARLoraLoader",
            display_name="Load GLM-Image AR LoRA",
            category=CATEGORY,
            description="Applies a PEFT LoRA trained on GLM-Image's AR model (vision_language_encoder) to it, at "
                        "PEFT's scale (lora_alpha / r per layer) times the strength. The loaded model other "
                        "branches use stays as it is; chain several of these nodes for several LoRAs. DiT LoRAs "
                        "go on the MODEL with 'Load GLM-Image LoRA'.",
            inputs=[
                GlmImageAR.Input("ar_model", tooltip="From 'Load GLM-Image AR model' (or another 'Load GLM-Image "
                                                     "AR LoRA', to chain LoRAs)."),
                io.Combo.Input("lora_name", options=lora_choices(),
                               tooltip="A PEFT adapter: a folder with adapter_model.safetensors + "
                                       "adapter_config.json (choose its adapter_model.safetensors), or one "
                                       "safetensors file with the config in its metadata; from models/loras/, or "
                                       "models/glm_image/ (marked [glm_image]). Refresh (R) to list new ones."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="How strongly the LoRA changes the AR model: 1 = as trained (PEFT's "
                                       "merge), 0 = not at all, negative = away from it."),
            ],
            outputs=[GlmImageAR.Output("ar_model_out", display_name="AR model",
                                       tooltip="The AR model with the LoRA applied, for 'GLM-Image generate tokens'.")],
        )

    @classmethod
    def execute(cls, ar_model, lora_name: str, strength: float) -> io.NodeOutput:
        if strength == 0:  # as ComfyUI's own LoRA loaders: nothing to apply
            return io.NodeOutput(ar_model)
        with_lora, applied = load_ar_lora(ar_model, lora_name, strength)
        show_message(applied)
        return io.NodeOutput(with_lora)


__all__ = ["GLMImageARLoraLoader"]
