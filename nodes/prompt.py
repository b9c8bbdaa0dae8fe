from .api import io

from ..glmimage_core.images import split_batch
from ..glmimage_core.ar.chat_prompt import prepare_inputs
from .sockets import CATEGORY, GlmImageAR, GlmImageInputs, GlmImageShape


class GLMImagePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImagePrompt",
            display_name="GLM-Image prompt",
            category=CATEGORY,
            description="Turns a prompt (and, for image-to-image, source images) into the AR model's inputs, "
                        "with the target shape written exactly once.",
            inputs=[
                GlmImageAR.Input("ar_model", tooltip="From 'Load GLM-Image AR model' (its processor is used)."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="What to draw (or, with images, the edit to make). Text in quotes is "
                                        "rendered as lettering by the decoder. A <sop>H W<eop> tag sets the "
                                        "size in tokens and is removed from the text."),
                GlmImageShape.Input("shape", optional=True,
                                    tooltip="Target size. Wins over a tag in the prompt (a different tag is an "
                                            "error). Unconnected: the tag, else the first source image's size, "
                                            "else 768x1152."),
                io.Image.Input("image", optional=True,
                               tooltip="Source image(s) for image-to-image; every picture of the batch is a "
                                       "source. Resized to multiples of 32 px within the model's limits."),
                io.Image.Input("image_2", optional=True,
                               tooltip="More source image(s), e.g. of another size than 'image'."),
            ],
            outputs=[GlmImageInputs.Output("inputs", display_name="inputs",
                                           tooltip="Tokenised prompt, shape and sources.")],
        )

    @classmethod
    def execute(cls, ar_model, prompt: str, shape=None, image=None, image_2=None) -> io.NodeOutput:
        images = []
        if image is not None:
            images += split_batch(image, "image")
        if image_2 is not None:
            images += split_batch(image_2, "image_2")
        return io.NodeOutput(prepare_inputs(ar_model.processor, prompt, shape=shape, images=images))
