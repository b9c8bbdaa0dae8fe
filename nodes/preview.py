from .api import io

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.tokens.grid_preview import model_palette, render_grid
from .sockets import CATEGORY, GlmImageAR, GlmImagePrior


class GLMImagePreviewTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImagePreviewTokens",
            display_name="GLM-Image preview tokens",
            category=CATEGORY,
            description="A false-colour picture of the token grid, before (or without) the decoder. Colours "
                        "come from the model's own codebook, so similar tokens look similar (the same colours "
                        "as the generate node's live preview); tokens from a file without a model get fixed "
                        "colours per id.",
            inputs=[
                GlmImagePrior.Input("prior", tooltip="From 'GLM-Image extract tokens' or 'Load GLM-Image tokens'."),
                io.Int.Input("cell_px", default=8, min=1, max=64,
                             tooltip="Pixels per token in the picture (the real picture has 32)."),
                GlmImageAR.Input("ar_model", optional=True,
                                 tooltip="Optional. Colour by this model's codebook. Not needed for tokens that "
                                         "come from 'GLM-Image extract tokens' (they keep the colours of the model "
                                         "that sampled them); useful for tokens loaded from a file, which carry no "
                                         "colours. Without either, each id gets a fixed colour and similar tokens "
                                         "do not look alike."),
            ],
            outputs=[io.Image.Output("image", display_name="IMAGE", tooltip="One false-colour picture per sample.")],
        )

    @classmethod
    def execute(cls, prior, cell_px: int, ar_model=None) -> io.NodeOutput:
        palette = prior.palette
        if ar_model is not None:
            if ar_model.codebook_size != prior.codebook_size:
                raise GlmImageInputError(
                    f"ar_model has a codebook of {ar_model.codebook_size} ids but the prior's tokens come from one "
                    f"of {prior.codebook_size}: connect the AR model that sampled these tokens, or leave ar_model "
                    "unconnected")
            with ar_model.lock:
                from_model = model_palette(ar_model.model, ar_model.codebook_size)
            palette = from_model if from_model is not None else palette
        return io.NodeOutput(render_grid(prior.grids, prior.codebook_size, cell=cell_px, palette=palette))
