from ..glmimage_comfy.decoder_sampling import decode_vram, decode_with_comfy
from ..glmimage_core.dit.decoder_inputs import MAX_STEPS
from .api import io
from .messages import show_message
from .inputs import source_images
from .sockets import CATEGORY, GlmImageDecoder, GlmImagePrior


class GLMImageDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageDecode",
            display_name="GLM-Image decode",
            category=CATEGORY,
            description="Renders GLM-Image tokens to a picture with the diffusion decoder: the same native MODEL, "
                        "ComfyUI sampler (euler, GLM-Image's schedule) and VAE a KSampler workflow uses, in one "
                        "node (progress and previews per step; cancel stops between steps). Changing only these "
                        "settings re-runs the decoder, not the token sampling.",
            inputs=[
                GlmImageDecoder.Input("decoder", tooltip="From 'Load GLM-Image decoder'."),
                GlmImagePrior.Input("prior", tooltip="From 'GLM-Image extract tokens' or 'Load GLM-Image tokens'."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="Text in quotes is drawn as lettering. Empty = the prompt the tokens "
                                        "were made from."),
                io.Int.Input("steps", default=50, min=1, max=MAX_STEPS, tooltip="Denoising steps (50 = the authors')."),
                io.Float.Input("guidance", default=1.5, min=0.0, max=20.0, step=0.05,
                               tooltip="Classifier-free guidance; 1.0 turns it off (half the work)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFF_FFFF_FFFF_FFFF, control_after_generate=True,
                             tooltip="Seed of the starting noise."),
                io.Image.Input("source_image", optional=True,
                               tooltip="Image-to-image: the source image(s) connected to the prompt node's "
                                       "'image' input, in the same order."),
                io.Image.Input("source_image_2", optional=True,
                               tooltip="The source image(s) connected to the prompt node's 'image_2'."),
            ],
            outputs=[io.Image.Output("image", display_name="IMAGE", tooltip="The picture(s), one per token grid.")],
        )

    @classmethod
    def execute(cls, decoder, prior, prompt: str, steps: int, guidance: float, seed: int, source_image=None,
                source_image_2=None) -> io.NodeOutput:
        note = decode_vram(decoder, prior, guidance)
        if note:
            show_message(note)
        pixels = decode_with_comfy(decoder, prior, prompt.strip() or None, steps, guidance, seed,
                                   source_images(source_image, source_image_2), decoder.vram_limit)
        return io.NodeOutput(pixels)
