"""Load GLM-Image LoRA: a DiT LoRA at the strength diffusers gives it (its lora_alpha from the file's metadata)."""

from __future__ import annotations

from ..glmimage_comfy.lora_metadata import with_peft_alphas
from ..glmimage_core.ar.lora_adapters import is_ar_lora
from ..glmimage_core.errors import GlmImageInputError
from .api import io
from .messages import show_message
from .sockets import CATEGORY

NO_LORAS = "(no LoRAs in models/loras)"


def lora_choices() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras") or [NO_LORAS]


class GLMImageLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageLoraLoader",
            display_name="Load GLM-Image LoRA",
            category=CATEGORY,
            description="Applies a LoRA to GLM-Image's DiT at the strength diffusers gives it: a diffusers/PEFT "
                        "LoRA keeps its lora_alpha in the file's metadata, which the stock LoRA loaders do not "
                        "read (they would apply it at strength x r / lora_alpha). Other LoRAs load as in "
                        "LoraLoaderModelOnly.",
            inputs=[
                io.Model.Input("model", tooltip="From 'Load GLM-Image DiT' (or its patched versions)."),
                io.Combo.Input("lora_name", options=lora_choices(), tooltip="A LoRA file in models/loras/."),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA changes the DiT; 1 = as in diffusers."),
            ],
            outputs=[io.Model.Output("model_out", display_name="MODEL", tooltip="The DiT with the LoRA applied.")],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength_model: float) -> io.NodeOutput:
        import comfy.sd
        import comfy.utils
        import folder_paths

        if lora_name == NO_LORAS:
            raise ValueError("lora_name: no LoRA file found in models/loras/; put one there and refresh the page")
        if strength_model == 0:
            return io.NodeOutput(model)
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        lora, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        if is_ar_lora(lora):
            raise GlmImageInputError(f"lora_name {lora_name!r} is a LoRA of GLM-Image's AR model, not of the DiT: "
                                     "apply it with 'Load GLM-Image AR LoRA' on the AR model")
        lora, note = with_peft_alphas(lora, metadata, name=f"lora_name {lora_name!r}")
        if note:
            show_message(note)
        model_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, strength_model, 0)
        return io.NodeOutput(model_lora)


__all__ = ["GLMImageLoraLoader"]
