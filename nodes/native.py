"""GLM-Image as native ComfyUI models: DiT -> MODEL, VAE -> VAE, tokens -> CONDITIONING for stock samplers."""

from ..glmimage_core import decoder_loading
from ..glmimage_core.cast_layers import WEIGHT_DTYPE_CHOICES
from ..glmimage_core.decode_inputs import MAX_STEPS
from ..glmimage_core.dtypes import DTYPE_CHOICES
from ..glmimage_core.images import split_batch
from ..glmimage_core.runtime import DEVICE_CHOICES
from ..glmimage_comfy.conditioning import build_conditioning
from ..glmimage_comfy.decode_node import describe_dit, glm_sigmas
from ..glmimage_comfy.native_model import native_model, with_vram_limit
from ..glmimage_comfy.vae import comfy_vae, preview_factors
from .api import ADVANCED, io
from .loader import model_choices, require_model
from .messages import show_message
from .sockets import CATEGORY, GlmImageGlyph, GlmImagePrior

MODEL_TOOLTIP = ("A folder under models/glm_image/ in the hub layout of zai-org/GLM-Image (transformer/, vae/, "
                 "text_encoder/, tokenizer/, scheduler/).")
WEIGHT_DTYPE_TOOLTIP = ("How the DiT's weights are stored: default = the dtype above (bf16: ~12.9 GB); fp8_e4m3fn / "
                        "fp8_e5m2 = 8-bit storage (~6.5 GB), computed in the dtype above, slightly different "
                        "pictures (ComfyUI's own weight_dtype option).")
VRAM_LIMIT_TOOLTIP = ("Most GB of the DiT to keep on the GPU; the rest streams from RAM each step (slower). "
                      "0 = ComfyUI decides (streams only what does not fit).")


def vram_limit_bytes(vram_limit_gb: float) -> int | None:
    return int(vram_limit_gb * (1 << 30)) if vram_limit_gb and vram_limit_gb > 0 else None


def device_input() -> io.Combo.Input:
    return io.Combo.Input("device", options=list(DEVICE_CHOICES), default="auto",
                          tooltip="auto/gpu = ComfyUI's compute device; cpu is very slow.", **ADVANCED)


def dit_weight_dtype_input(optional: bool = False) -> io.Combo.Input:
    """The DiT's weight_dtype, on the DiT loader and the decoder loader (optional there: added after 0.1.0)."""
    return io.Combo.Input("weight_dtype", options=WEIGHT_DTYPE_CHOICES, default="default",
                          tooltip=WEIGHT_DTYPE_TOOLTIP, optional=optional)


def vram_limit_input(optional: bool = False) -> io.Float.Input:
    return io.Float.Input("vram_limit_gb", default=0.0, min=0.0, max=256.0, step=0.5, tooltip=VRAM_LIMIT_TOOLTIP,
                          optional=optional, **ADVANCED)


def source_images(source_image, source_image_2) -> list | None:
    """The image-to-image sources of a decode or conditioning node, one picture each, in the prompt's order."""
    sources = []
    if source_image is not None:
        sources += split_batch(source_image, "source_image")
    if source_image_2 is not None:
        sources += split_batch(source_image_2, "source_image_2")
    return sources or None


def dtype_input() -> io.Combo.Input:
    return io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                          tooltip="Compute precision. auto = the checkpoint's own (bf16 for the hub weights).",
                          **ADVANCED)


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
                io.Combo.Input("model", options=model_choices(), tooltip=MODEL_TOOLTIP),
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
        patcher = with_vram_limit(native_model(dit, lambda: preview_factors(vae_model())),
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
            inputs=[io.Combo.Input("model", options=model_choices(), tooltip=MODEL_TOOLTIP), dtype_input(),
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
            inputs=[io.Combo.Input("model", options=model_choices(), tooltip=MODEL_TOOLTIP), dtype_input(),
                    device_input()],
            outputs=[GlmImageGlyph.Output("glyph_encoder", display_name="glyph encoder",
                                          tooltip="For 'GLM-Image conditioning'.")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str = "auto", device: str = "auto") -> io.NodeOutput:
        return io.NodeOutput(decoder_loading.load_glyph_encoder(require_model(model), dtype=dtype, device=device))


class GLMImageConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageConditioning",
            display_name="GLM-Image conditioning",
            category=CATEGORY,
            description="GLM-Image tokens as conditioning for ComfyUI's samplers: positive (tokens + lettering), "
                        "negative (GLM-Image's unguided branch), the MODEL with the schedule for the tokens' size, "
                        "and an empty LATENT of that size. KSampler: euler, simple, 50 steps, cfg 1.5. A "
                        "ModelSamplingSD3 / AuraFlow / Flux node placed before this one keeps its own shift.",
            inputs=[
                io.Model.Input("model", tooltip="From 'Load GLM-Image DiT' (LoRA and patches may come between)."),
                GlmImageGlyph.Input("glyph_encoder", tooltip="From 'Load GLM-Image glyph encoder'."),
                GlmImagePrior.Input("prior", tooltip="From 'GLM-Image extract tokens' or 'Load GLM-Image tokens'."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Text in quotes is drawn as lettering. Empty = the prompt the tokens "
                                        "were made from."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Image-to-image: the VAE that reads the source images ('Load GLM-Image VAE')."),
                io.Image.Input("source_image", optional=True,
                               tooltip="Image-to-image: the source image(s) connected to the prompt node's "
                                       "'image' input, in the same order."),
                io.Image.Input("source_image_2", optional=True,
                               tooltip="The source image(s) connected to the prompt node's 'image_2'."),
            ],
            outputs=[
                io.Model.Output("patched_model", display_name="MODEL",
                                tooltip="The model with GLM-Image's schedule (shift) for these tokens' size, or "
                                        "the shift of a model-sampling node placed before this one."),
                io.Conditioning.Output("positive", display_name="positive", tooltip="Tokens kept, lettering."),
                io.Conditioning.Output("negative", display_name="negative",
                                       tooltip="Tokens dropped, no lettering: GLM-Image's unguided branch."),
                io.Latent.Output("latent", display_name="LATENT",
                                 tooltip="An empty latent of the tokens' size, one per token grid."),
            ],
        )

    @classmethod
    def execute(cls, model, glyph_encoder, prior, prompt: str, vae=None, source_image=None,
                source_image_2=None) -> io.NodeOutput:
        cond = build_conditioning(model, glyph_encoder, prior, prompt.strip() or None, vae,
                                  source_images(source_image, source_image_2))
        if cond.note:
            show_message(cond.note)
        return io.NodeOutput(cond.model, cond.positive, cond.negative, cond.latent)


class GLMImageScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageScheduler",
            display_name="GLM-Image scheduler",
            category=CATEGORY,
            description="GLM-Image's own schedule as SIGMAS, for SamplerCustom / SamplerCustomAdvanced. KSampler's "
                        "'simple' scheduler gives the same at 50 steps; this one is exact at any step count.",
            inputs=[io.Model.Input("model", tooltip="The MODEL from 'GLM-Image conditioning' (its shift is used)."),
                    io.Int.Input("steps", default=50, min=1, max=MAX_STEPS, tooltip="Denoising steps (50 = the authors').")],
            outputs=[io.Sigmas.Output("sigmas", display_name="SIGMAS", tooltip="The noise levels per step.")],
        )

    @classmethod
    def execute(cls, model, steps: int) -> io.NodeOutput:
        return io.NodeOutput(glm_sigmas(model, steps))


__all__ = ["GLMImageDiTLoader", "GLMImageVAELoader", "GLMImageGlyphEncoderLoader", "GLMImageConditioning",
           "GLMImageScheduler"]
