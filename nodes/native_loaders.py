"""GLM-Image's DiT, VAE and glyph encoder as native ComfyUI models: MODEL (KSampler, LoRA loaders, model patches),
VAE (stock VAE Decode / Encode / Decode (Tiled)) and the glyph encoder for 'GLM-Image conditioning'."""

from ..glmimage_core.dit import loading as decoder_loading
from ..glmimage_core.weights.model_folders import is_weight_file as dit_file
from ..glmimage_comfy.decoder_sampling import describe_dit
from ..glmimage_comfy.native_patcher import native_model, with_vram_limit
from ..glmimage_comfy.vae import comfy_vae, preview_factors
from .api import io
from .inputs import (device_input, dit_weight_dtype_input, dtype_input, model_choices, model_tooltip, require_model,
                     vram_limit_bytes, vram_limit_input)
from .messages import show_message
from .sockets import CATEGORY, GlmImageGlyph


class GLMImageDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageDiTLoader",
            display_name="Load GLM-Image DiT",
            category=CATEGORY,
            description="Loads GLM-Image's diffusion transformer as a native ComfyUI MODEL: use it with KSampler, "
                        "LoRA loaders and model patches. Condition it with 'GLM-Image conditioning'.",
            inputs=[
                io.Combo.Input("model", options=model_choices("dit"), tooltip=model_tooltip("dit")),
                dit_weight_dtype_input(),
                vram_limit_input(),
                dtype_input(),
                device_input(),
            ],
            outputs=[io.Model.Output("dit", display_name="MODEL", tooltip="GLM-Image's DiT as a ComfyUI model."),
                     io.String.Output("memory", display_name="memory",
                                      tooltip="What the DiT holds on the GPU with these options, and with the "
                                              "others (connect 'Preview Any' to read it).")],
        )

    @classmethod
    def execute(cls, model: str, weight_dtype: str, vram_limit_gb: float = 0.0, dtype: str = "auto",
                device: str = "auto") -> io.NodeOutput:
        folder = require_model(model)
        dit = decoder_loading.load_dit(folder, dtype=dtype, device=device, weight_dtype=weight_dtype)
        vae_model = lambda: decoder_loading.load_vae(folder, dtype=dtype, device=device)  # noqa: E731
        factors = None if dit_file(folder) else lambda: preview_factors(vae_model())  # a file has no VAE beside
        patcher = with_vram_limit(native_model(dit, factors),
                                  vram_limit_bytes(vram_limit_gb))
        memory = describe_dit(dit)
        show_message(memory)
        return io.NodeOutput(patcher, memory)


class GLMImageVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageVAELoader",
            display_name="Load GLM-Image VAE",
            category=CATEGORY,
            description="Loads GLM-Image's VAE as a ComfyUI VAE: stock 'VAE Decode', 'VAE Decode (Tiled)' and "
                        "'VAE Encode' work with it.",
            inputs=[io.Combo.Input("model", options=model_choices("vae"), tooltip=model_tooltip("vae")), dtype_input(),
                    device_input()],
            outputs=[io.Vae.Output("vae", display_name="VAE", tooltip="GLM-Image's VAE (16 latent channels).")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str = "auto", device: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(comfy_vae(decoder_loading.load_vae(require_model(model), dtype=dtype, device=device)))


class GLMImageGlyphEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageGlyphEncoderLoader",
            display_name="Load GLM-Image glyph encoder",
            category=CATEGORY,
            description="Loads the ByT5 glyph encoder that turns the quoted text of a prompt into lettering "
                        "for GLM-Image's DiT.",
            inputs=[io.Combo.Input("model", options=model_choices("glyph"), tooltip=model_tooltip("glyph")),
                    dtype_input(), device_input()],
            outputs=[GlmImageGlyph.Output("glyph_encoder", display_name="glyph encoder",
                                          tooltip="For 'GLM-Image conditioning'.")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str = "auto", device: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(decoder_loading.load_glyph_encoder(require_model(model), dtype=dtype, device=device))


__all__ = ["GLMImageDiTLoader", "GLMImageVAELoader", "GLMImageGlyphEncoderLoader"]
