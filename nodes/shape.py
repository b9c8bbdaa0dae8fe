from .api import io

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.shapes import MAX_SIDE_PX, MAX_SIDE_TOKENS, PIXELS_PER_TOKEN, GridShape
from .sockets import CATEGORY, GlmImageShape

SIZE_FROM = ["pixels", "tokens", "tag"]


class GLMImageShape(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageShape",
            display_name="GLM-Image shape",
            category=CATEGORY,
            description="The size of the picture to generate. GLM-Image works in tokens of 32x32 px; "
                        "text-to-image also samples a small preview grid first.",
            inputs=[
                io.Combo.Input("size_from", options=SIZE_FROM, default="pixels",
                               tooltip="Which inputs set the size: width/height in pixels, token_h/token_w "
                                       "in tokens, or a <sop>H W<eop> tag in 'tag'."),
                io.Int.Input("width", default=1024, min=PIXELS_PER_TOKEN, max=MAX_SIDE_PX, step=PIXELS_PER_TOKEN,
                             tooltip="Width in pixels (multiples of 32; used when size_from = pixels)."),
                io.Int.Input("height", default=1024, min=PIXELS_PER_TOKEN, max=MAX_SIDE_PX, step=PIXELS_PER_TOKEN,
                             tooltip="Height in pixels (multiples of 32; used when size_from = pixels)."),
                io.Int.Input("token_h", default=32, min=1, max=MAX_SIDE_TOKENS,
                             tooltip="Grid height in tokens of 32 px (used when size_from = tokens)."),
                io.Int.Input("token_w", default=32, min=1, max=MAX_SIDE_TOKENS,
                             tooltip="Grid width in tokens of 32 px (used when size_from = tokens)."),
                io.String.Input("tag", default="<sop>32 32<eop>",
                                tooltip="A grid written as GLM-Image writes it, <sop>H W<eop> in tokens "
                                        "(used when size_from = tag)."),
            ],
            outputs=[
                GlmImageShape.Output("shape", display_name="shape",
                                     tooltip="The target grid, for the GLM-Image prompt node."),
                io.Int.Output("width_px", display_name="width (px)", tooltip="Width of the picture in pixels."),
                io.Int.Output("height_px", display_name="height (px)", tooltip="Height of the picture in pixels."),
                io.Int.Output("grid_h", display_name="grid height", tooltip="Grid height in tokens."),
                io.Int.Output("grid_w", display_name="grid width", tooltip="Grid width in tokens."),
                io.Int.Output("preview_h", display_name="preview height",
                              tooltip="Preview grid height (text-to-image samples it first)."),
                io.Int.Output("preview_w", display_name="preview width", tooltip="Preview grid width."),
                io.Int.Output("tokens_t2i", display_name="t2i token count",
                              tooltip="Tokens sampled for text-to-image (preview + grid + end)."),
                io.Int.Output("tokens_i2i", display_name="i2i token count",
                              tooltip="Tokens sampled for image-to-image (grid + end)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, size_from=None, width=None, height=None, token_h=None, token_w=None,
                        tag=None) -> bool | str:
        """Report a bad size when the graph is queued, before anything runs. Inputs driven by a link
        arrive here as None (ComfyUI passes only typed-in values); a size that needs one of them is
        checked when the node runs instead."""
        needed = _needed(size_from, width, height, token_h, token_w, tag)
        if size_from is None or any(value is None for value in needed.values()):
            return True
        try:
            _shape(size_from, width, height, token_h, token_w, tag)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, size_from: str, width: int, height: int, token_h: int, token_w: int,
                tag: str) -> io.NodeOutput:
        shape = _shape(size_from, width, height, token_h, token_w, tag)
        prev_h, prev_w = shape.preview
        return io.NodeOutput(shape, shape.width, shape.height, shape.token_h, shape.token_w, prev_h, prev_w,
                             shape.max_new_tokens("t2i"), shape.max_new_tokens("i2i"))


def _needed(size_from, width, height, token_h, token_w, tag) -> dict:
    """The inputs the chosen size_from reads, by name."""
    return {"pixels": {"width": width, "height": height}, "tokens": {"token_h": token_h, "token_w": token_w},
            "tag": {"tag": tag}}.get(size_from, {})


def _shape(size_from: str, width: int, height: int, token_h: int, token_w: int, tag: str) -> GridShape:
    """The grid the inputs ask for. Values from links skip ComfyUI's own type and min/max checks,
    so the inputs this size_from reads are checked here, by name."""
    if size_from not in SIZE_FROM:
        raise GlmImageInputError(f"size_from {size_from!r} is not one of {SIZE_FROM}")
    for name, value in _needed(size_from, width, height, token_h, token_w, tag).items():
        kind = str if name == "tag" else int
        if not isinstance(value, kind) or isinstance(value, bool):
            raise GlmImageInputError(f"{name} must be {'text' if kind is str else 'a whole number'}, got "
                                     f"{value!r} ({type(value).__name__})")
    if size_from == "pixels":
        return GridShape.from_pixels(width=width, height=height)
    if size_from == "tokens":
        return GridShape(token_h, token_w)
    return GridShape.from_tag(tag)
