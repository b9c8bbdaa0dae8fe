from .api import io

from ..glmimage_core.token_preview import render_grid
from .sockets import CATEGORY, GlmImagePrior


class GLMImagePreviewTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImagePreviewTokens",
            display_name="GLM-Image preview tokens",
            category=CATEGORY,
            description="A false-colour picture of the token grid: each codebook id gets a fixed colour. Shows "
                        "what the AR stage made before (or without) the decoder.",
            inputs=[
                GlmImagePrior.Input("prior", tooltip="From 'GLM-Image extract tokens' or 'Load GLM-Image tokens'."),
                io.Int.Input("cell_px", default=8, min=1, max=64,
                             tooltip="Pixels per token in the picture (the real picture has 32)."),
            ],
            outputs=[io.Image.Output("image", tooltip="One false-colour picture per sample.")],
        )

    @classmethod
    def execute(cls, prior, cell_px: int) -> io.NodeOutput:
        return io.NodeOutput(render_grid(prior.grids, prior.codebook_size, cell=cell_px))
