import dataclasses

from ..glmimage_comfy.decoder_sampling import describe_decoder
from ..glmimage_core.dit import loading as decoder_loading
from ..glmimage_core.dtypes import DTYPE_CHOICES
from .api import ADVANCED, io
from .messages import show_message
from .inputs import device_input, dit_weight_dtype_input, model_choices, require_model, vram_limit_bytes, vram_limit_input
from .sockets import CATEGORY, GlmImageDecoder


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
