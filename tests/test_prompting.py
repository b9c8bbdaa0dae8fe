import pytest
import torch

from glmimage_core.errors import GlmImageInputError
from glmimage_core.images import split_batch, to_rgb
from glmimage_core.ar.chat_prompt import prepare_inputs
from glmimage_core.shapes import DEFAULT_SHAPE, GridShape


def _text(ar, inputs):
    return ar.processor.tokenizer.decode(inputs.model_inputs["input_ids"][0])


def test_shape_appears_exactly_once_when_written_in_the_prompt(ar):
    inputs = prepare_inputs(ar.processor, "a red fox <sop>4 3<eop>")
    text = _text(ar, inputs)
    assert text.count("<sop>4 3<eop>") == 1
    assert text.count("<sop>") == 2  # the target and the preview grid, nothing else
    assert "<sop>18 13<eop>" in text
    assert inputs.prompt == "a red fox"
    assert inputs.model_inputs["image_grid_thw"].tolist() == [[1, 4, 3], [1, 18, 13]]


def test_non_default_size_text_and_grids_agree(ar):
    inputs = prepare_inputs(ar.processor, "a boat", GridShape.from_pixels(width=320, height=192))
    text = _text(ar, inputs)
    assert text.count("<sop>6 10<eop>") == 1
    prev = GridShape(6, 10).preview
    assert inputs.model_inputs["image_grid_thw"].tolist() == [[1, 6, 10], [1, *prev]]


def test_default_shape_without_tag_or_input(ar):
    assert prepare_inputs(ar.processor, "a boat").shape == DEFAULT_SHAPE


def test_connected_shape_and_matching_tag_agree_but_a_conflict_is_reported(ar):
    assert prepare_inputs(ar.processor, "x <sop>4 3<eop>", GridShape(4, 3)).shape == GridShape(4, 3)
    with pytest.raises(GlmImageInputError, match="prompt says <sop>4 3<eop>.*connected shape is <sop>5 3<eop>"):
        prepare_inputs(ar.processor, "x <sop>4 3<eop>", GridShape(5, 3))


def test_empty_prompt_is_an_error(ar):
    with pytest.raises(GlmImageInputError, match="prompt is empty"):
        prepare_inputs(ar.processor, "  <sop>4 3<eop> ")


def test_image_to_image_sources_are_resized_once_to_d32_grids(ar):
    img = torch.rand(100, 150, 3)
    inputs = prepare_inputs(ar.processor, "make it blue", images=[img])
    assert inputs.mode == "i2i"
    src = inputs.sources[0]
    assert (src.height % 32, src.width % 32) == (0, 0)
    assert inputs.shape == GridShape(*src.grid)  # no shape given: the source's size
    assert inputs.model_inputs["image_grid_thw"].tolist() == [[1, *src.grid], [1, *src.grid]]
    text = _text(ar, inputs)
    assert text.count("<sop>") == 1 and text.count("<|image|>") == src.grid[0] * src.grid[1]


def test_greyscale_and_alpha_sources_become_rgb():
    grey = torch.full((10, 12, 1), 0.25)
    assert to_rgb(grey).shape == (10, 12, 3) and torch.allclose(to_rgb(grey), torch.full((10, 12, 3), 0.25))
    rgba = torch.zeros(4, 4, 4)  # fully transparent black -> white background
    assert torch.allclose(to_rgb(rgba), torch.ones(4, 4, 3))


def test_zero_size_and_bad_images_are_errors_naming_the_input(ar):
    with pytest.raises(GlmImageInputError, match="image_2 is empty"):
        split_batch(torch.zeros(1, 0, 64, 3), "image_2")
    with pytest.raises(GlmImageInputError, match="image has 5 channels"):
        split_batch(torch.zeros(1, 64, 64, 5))
    with pytest.raises(GlmImageInputError, match="source image 1 is 400x64 px"):
        prepare_inputs(ar.processor, "x", images=[torch.rand(64, 400, 3)])
