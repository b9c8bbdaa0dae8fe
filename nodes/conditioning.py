"""GLM-Image tokens as conditioning for ComfyUI's samplers, and GLM-Image's schedule as SIGMAS."""

from ..glmimage_core.dit.decoder_inputs import MAX_STEPS
from ..glmimage_comfy.token_conditioning import build_conditioning
from ..glmimage_comfy.decoder_sampling import glm_sigmas
from .api import io
from .inputs import source_images
from .messages import show_message
from .sockets import CATEGORY, GlmImageGlyph, GlmImagePrior


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


__all__ = ["GLMImageConditioning", "GLMImageScheduler"]
