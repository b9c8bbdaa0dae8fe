"""Prompt + shape + source images -> the AR model's inputs (`GLMIMAGE_INPUTS`).

The processor writes the grid sizes itself (`<sop>H W<eop>` for the target,
and the preview grid for text-to-image) from `target_h`/`target_w`. A shape
typed into the prompt is therefore parsed out of the text and handed to the
processor instead, so the model sees it exactly once.
"""

from __future__ import annotations


import torch

from ..errors import GlmImageInputError
from ..images import SourceImage, prepare_sources
from ..payloads import GlmImageInputs
from ..shapes import DEFAULT_SHAPE, GridShape, split_shape_tags


def resolve_shape(prompt: str, shape: GridShape | None, sources: list[SourceImage]) -> tuple[str, GridShape]:
    """Which shape wins: a connected shape, else a tag in the prompt, else the first source's size (i2i)
    or the processor's default 1152x768 (t2i). A connected shape that disagrees with a tag is an error."""
    text, tagged = split_shape_tags(prompt)
    if shape is not None and tagged is not None and shape != tagged:
        raise GlmImageInputError(
            f"the prompt says {tagged.tag()} ({tagged.describe()}) but the connected shape is "
            f"{shape.tag()} ({shape.describe()}): remove the tag from the prompt or disconnect the shape")
    if shape is None:
        shape = tagged
    if shape is None:
        shape = GridShape(*sources[0].grid) if sources else DEFAULT_SHAPE
    return text, shape


def build_messages(prompt: str, sources: list[SourceImage]) -> list[dict]:
    content = [{"type": "image", "image": s.pil()} for s in sources]
    content.append({"type": "text", "text": prompt})
    return [{"role": "user", "content": content}]


def prepare_inputs(processor, prompt: str, shape: GridShape | None = None,
                   images: list[torch.Tensor] | None = None) -> GlmImageInputs:
    """Tokenise the prompt (and source images) with the target shape given to the processor."""
    if not isinstance(prompt, str):
        raise GlmImageInputError(f"prompt must be text, got {type(prompt).__name__}")
    sources = prepare_sources(images, processor.image_processor) if images else []
    text, shape = resolve_shape(prompt, shape, sources)
    if not text.strip():
        raise GlmImageInputError("prompt is empty: describe the picture (or the edit, for image-to-image)")
    model_inputs = processor.apply_chat_template(
        [build_messages(text, sources)],
        tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"target_h": shape.height, "target_w": shape.width},
    )
    inputs = GlmImageInputs(prompt=text, shape=shape, mode="i2i" if sources else "t2i",
                            model_inputs=dict(model_inputs), sources=sources)
    _check_grids(inputs)
    return inputs


def _check_grids(inputs: GlmImageInputs) -> None:
    """The processor's grids must be the ones we planned: sources at d32, then the target grid(s)."""
    grids = [tuple(int(v) for v in row[1:]) for row in inputs.model_inputs["image_grid_thw"]]
    expected = list(inputs.source_grids) + [(inputs.shape.token_h, inputs.shape.token_w)]
    if inputs.mode == "t2i":
        expected.append(inputs.shape.preview)
    if grids != expected:
        raise GlmImageInputError(
            f"the processor built image grids {grids}, expected {expected}: its image settings do not match "
            "GLM-Image's (patch 16 on half-size images); check the model folder's processor/ files")
