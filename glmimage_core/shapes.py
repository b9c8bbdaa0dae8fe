"""Target shapes: how many tokens the AR model samples, and in which grids.

One AR token covers 32x32 pixels. Text-to-image samples a small preview grid
before the large one; image-to-image samples only the large one. All of that
follows from (token_h, token_w), so a `GridShape` holds just those two numbers
and derives the rest the same way `GlmImageProcessor._get_target_shape` does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import GlmImageInputError

PIXELS_PER_TOKEN = 32
#: Largest side the published model was trained for (512..2048 px).
MAX_SIDE_PX = 2048
MAX_SIDE_TOKENS = MAX_SIDE_PX // PIXELS_PER_TOKEN

# `<sop>H W<eop>` as GLM-Image writes grid sizes; whitespace is tolerated.
_SHAPE_TAG = re.compile(r"<sop>\s*(\d+)\s+(\d+)\s*<eop>")
_ANY_TAG = re.compile(r"<sop>.*?(?:<eop>|$)", re.DOTALL)


@dataclass(frozen=True)
class GridShape:
    """A target grid of token_h x token_w AR tokens (each 32x32 px)."""

    token_h: int
    token_w: int

    def __post_init__(self) -> None:
        for name, value in (("token_h", self.token_h), ("token_w", self.token_w)):
            if not isinstance(value, int) or value < 1:
                raise GlmImageInputError(f"{name} must be a whole number of tokens >= 1 (32 px), got {value!r}")
            if value > MAX_SIDE_TOKENS:
                raise GlmImageInputError(
                    f"{name}={value} tokens ({value * PIXELS_PER_TOKEN} px) is beyond GLM-Image's limit of "
                    f"{MAX_SIDE_TOKENS} tokens ({MAX_SIDE_PX} px) per side")

    # --- constructors -------------------------------------------------
    @classmethod
    def from_pixels(cls, width: int, height: int) -> "GridShape":
        """Pixel sizes are floored to multiples of 32, as the processor does."""
        for name, value in (("width", width), ("height", height)):
            if value < PIXELS_PER_TOKEN:
                raise GlmImageInputError(
                    f"{name}={value} px is below the smallest GLM-Image size of {PIXELS_PER_TOKEN} px")
            if value > MAX_SIDE_PX:
                raise GlmImageInputError(
                    f"{name}={value} px is beyond GLM-Image's limit of {MAX_SIDE_PX} px per side")
        return cls(height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN)

    @classmethod
    def from_tag(cls, text: str) -> "GridShape":
        """Parse a single `<sop>H W<eop>` (H and W in tokens)."""
        match = _SHAPE_TAG.fullmatch(text.strip())
        if match is None:
            raise GlmImageInputError(
                f"shape spec {text!r} is malformed: write it as <sop>H W<eop> with H and W in tokens "
                f"of 32 px, e.g. <sop>36 24<eop> for 1152x768")
        return cls(int(match.group(1)), int(match.group(2)))

    # --- derived sizes ------------------------------------------------
    @property
    def height(self) -> int:
        return self.token_h * PIXELS_PER_TOKEN

    @property
    def width(self) -> int:
        return self.token_w * PIXELS_PER_TOKEN

    @property
    def preview(self) -> tuple[int, int]:
        """The small grid text-to-image samples first (`GlmImageProcessor._get_target_shape`)."""
        ratio = self.token_h / self.token_w
        return int(math.sqrt(ratio) * 16), int(math.sqrt(1 / ratio) * 16)

    @property
    def num_tokens(self) -> int:
        return self.token_h * self.token_w

    def max_new_tokens(self, mode: str) -> int:
        """Grid tokens to sample plus the closing EOS."""
        if mode == "t2i":
            prev_h, prev_w = self.preview
            return prev_h * prev_w + self.num_tokens + 1
        return self.num_tokens + 1

    def grid_offset(self, mode: str) -> int:
        """Where the large grid starts among the generated tokens."""
        if mode == "t2i":
            prev_h, prev_w = self.preview
            return prev_h * prev_w
        return 0

    def tag(self) -> str:
        return f"<sop>{self.token_h} {self.token_w}<eop>"

    def describe(self) -> str:
        return f"{self.width}x{self.height} px ({self.token_h}x{self.token_w} tokens)"


DEFAULT_SHAPE = GridShape(36, 24)  # the processor's own default: 1152x768 (HxW)


def split_shape_tags(prompt: str) -> tuple[str, GridShape | None]:
    """Remove `<sop>H W<eop>` tags from a prompt and return (clean text, shape).

    The upstream example writes the target grid and the preview grid into the
    prompt; the processor adds both itself, so leaving them in the text would
    state the shape twice. A second tag is accepted only if it is exactly the
    preview grid of the first (what that example writes).
    """
    tags = list(_ANY_TAG.finditer(prompt))
    if not tags:
        return prompt, None
    shapes = [GridShape.from_tag(t.group(0)) for t in tags]
    if len(shapes) > 2:
        raise GlmImageInputError(
            f"prompt has {len(shapes)} <sop>H W<eop> tags; write at most one (the target grid)")
    target = shapes[0]
    if len(shapes) == 2 and (shapes[1].token_h, shapes[1].token_w) != target.preview:
        raise GlmImageInputError(
            f"prompt's second tag {tags[1].group(0)!r} is not the preview grid of {target.tag()} "
            f"(that would be <sop>{target.preview[0]} {target.preview[1]}<eop>); write only the target grid")
    text = _ANY_TAG.sub("", prompt).strip()
    return text, target
