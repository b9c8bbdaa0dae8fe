"""'Save GLM-Image checkpoint': the hub folder -> single files per part in ComfyUI's model folders, from the editor
(what `python -m glmimage_core convert` does, for users who never open a terminal)."""

from ..glmimage_core.memory.host import host
from ..glmimage_core.weights import convert, formats
from ..glmimage_core.weights.model_folders import output_root, list_model_folders, resolve_model_path
from .api import io
from .inputs import NO_MODELS, require_model
from .messages import show_message
from .sockets import CATEGORY

PART_CHOICES = ["all", *formats.PARTS]
CONVENTION_CHOICES = ["comfy_quant", "scaled_fp8"]


class GLMImageSaveCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageSaveCheckpoint",
            display_name="Save GLM-Image checkpoint",
            category=CATEGORY,
            description="Converts the zai-org/GLM-Image hub folder into one file per part, in ComfyUI's "
                        "model folders (DiT -> diffusion_models/, AR model and glyph encoder -> text_encoders/, "
                        "VAE -> vae/), bf16 or fp8 .safetensors, or GGUF for the AR model and the DiT; the "
                        "loaders then list the files. Progress on the node; cancel leaves no half-written file.",
            inputs=[
                io.Combo.Input("model", options=list_model_folders() or [NO_MODELS],
                               tooltip="The hub folder under models/glm_image/ to convert (the zai-org/GLM-Image "
                                       "download)."),
                io.Combo.Input("part", options=PART_CHOICES, default="all",
                               tooltip="Which part to write: all, or the AR model (ar), the DiT (dit), the VAE "
                                       "(vae) or the glyph encoder (glyph)."),
                io.Combo.Input("format", options=[*convert.FORMATS, *formats.WRITERS], default="fp8_e4m3fn",
                               tooltip="bf16 = the weights as published (one file per part); fp8_e4m3fn / fp8_e5m2 "
                                       "= the AR model's and the DiT's Linear weights in 8 bits with a scale each "
                                       "(half the size; the VAE and glyph encoder stay bf16); gguf_q8_0 ... "
                                       "gguf_q4_0 = .gguf files of the AR model and the DiT (8 to 4.5 bits per "
                                       "weight; loading them needs the ComfyUI-GGUF node pack)."),
                io.Combo.Input("convention", options=CONVENTION_CHOICES, default="comfy_quant",
                               tooltip="fp8 file layout: comfy_quant = ComfyUI 0.33's per-layer format; scaled_fp8 "
                                       "= the older form. The pack reads both on any ComfyUI."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace files of the same name; off = stop if one exists."),
            ],
            outputs=[io.String.Output("files", display_name="files", tooltip="The files written, one per line.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: str, part: str, format: str, convention: str, overwrite: bool) -> io.NodeOutput:
        hub = resolve_model_path(require_model(model))
        parts = list(formats.PARTS) if part == "all" else [part]
        out_dirs = {}
        for name in parts:
            root = output_root(convert.COMFY_FOLDERS[name])
            if root is None:
                raise ValueError(f"ComfyUI has no '{convert.COMFY_FOLDERS[name]}' model folder to write to")
            out_dirs[name] = root
        written = convert.convert(hub, parts, out_dirs, format, convention, overwrite,
                                  lambda total, label: host().progress_bar(total), host().check_interrupted)
        text = "\n".join(str(path) for path in written)
        show_message(f"Save GLM-Image checkpoint wrote (or kept):\n{text}")
        return io.NodeOutput(text)
