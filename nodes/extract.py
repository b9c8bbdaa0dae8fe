from .api import io

from ..glmimage_core.tokens.grids import extract_prior
from .sockets import CATEGORY, GlmImagePrior, GlmImageTokens


class GLMImageExtractTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageExtractTokens",
            display_name="GLM-Image extract tokens",
            category=CATEGORY,
            description="Takes the large token grid out of the sampled ids (skipping text-to-image's preview "
                        "grid) and checks it: an early end or a non-image id is reported, never padded.",
            inputs=[GlmImageTokens.Input("tokens", tooltip="From 'GLM-Image generate tokens'.")],
            outputs=[
                GlmImagePrior.Output("prior", display_name="prior",
                                     tooltip="The token grid(s) for the decoder, plus source-image tokens for "
                                             "image-to-image."),
                io.Int.Output("count", display_name="token count",
                              tooltip="Number of grid tokens extracted (all samples)."),
            ],
        )

    @classmethod
    def execute(cls, tokens) -> io.NodeOutput:
        prior = extract_prior(tokens)
        return io.NodeOutput(prior, int(prior.grids.numel()))
