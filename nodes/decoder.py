import dataclasses

from ..glmimage_comfy.decode_node import decode_vram, decode_with_comfy, describe_decoder
from ..glmimage_core import decoder_loading
from ..glmimage_core.decode_inputs import MAX_STEPS
from ..glmimage_core.dtypes import DTYPE_CHOICES
from .api import ADVANCED, io
from .messages import show_message
from .inputs import (device_input, dit_weight_dtype_input, model_choices, require_model, source_images,
                     vram_limit_bytes, vram_limit_input)
from .sockets import CATEGORY, GlmImageDecoder, GlmImagePrior


class GLMImageDecoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageDecoderLoader",
            display_name="Load GLM-Image decoder",
            category=CATEGORY,
            description="Loads GLM-Image's diffusion decoder (DiT, VAE, glyph text encoder, scheduler) from the "
                        "hub layout folder under models/glm_image/. Loaded once and reused by later runs.",
            inputs=[
                io.Combo.Input("model", options=model_choices(),
                               tooltip="A folder under models/glm_image/ with transformer/, vae/, text_encoder/, "
                                       "tokenizer/ and scheduler/ (the zai-org/GLM-Image download)."),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                               tooltip="Weight precision. auto = the checkpoint's own (bf16 for the hub weights).",
                               **ADVANCED),
                device_input(),
                # Added after 0.1.0: optional, so a 0.1.0 API prompt without them still runs (same as before).
                dit_weight_dtype_input(optional=True),
                vram_limit_input(optional=True),
            ],
            outputs=[GlmImageDecoder.Output("decoder", display_name="decoder", tooltip="The diffusion decoder."),
                     io.String.Output("memory", display_name="memory",
                                      tooltip="What the decoder holds on the GPU with these options, and with the "
                                              "others (connect 'Preview Any' to read it).")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str, device: str, weight_dtype: str = "default",
                vram_limit_gb: float = 0.0) -> io.NodeOutput:
        shared = decoder_loading.load_decoder(require_model(model), dtype=dtype, device=device,
                                              weight_dtype=weight_dtype)
        # The loaded parts are shared by every loader of this folder; the VRAM limit is this loader's own.
        bundle = dataclasses.replace(shared, vram_limit=vram_limit_bytes(vram_limit_gb))
        memory = describe_decoder(bundle)
        show_message(memory)
        return io.NodeOutput(bundle, memory)


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
