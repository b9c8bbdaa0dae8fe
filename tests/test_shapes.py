import pytest

from glmimage_core.errors import GlmImageInputError
from glmimage_core.shapes import GridShape, split_shape_tags


def test_pixels_floor_to_tokens_and_preview_matches_processor_rule():
    shape = GridShape.from_pixels(width=768 + 31, height=1152)
    assert (shape.token_h, shape.token_w) == (36, 24)
    assert shape.preview == (19, 13)
    assert shape.max_new_tokens("t2i") == 19 * 13 + 36 * 24 + 1
    assert shape.max_new_tokens("i2i") == 36 * 24 + 1
    assert shape.grid_offset("t2i") == 19 * 13 and shape.grid_offset("i2i") == 0
    assert (shape.width, shape.height) == (768, 1152)


@pytest.mark.parametrize("tag,expected", [("<sop>36 24<eop>", (36, 24)), ("<sop> 4  3 <eop>", (4, 3))])
def test_tag_parsing(tag, expected):
    shape = GridShape.from_tag(tag)
    assert (shape.token_h, shape.token_w) == expected


@pytest.mark.parametrize("tag", ["<sop>36x24<eop>", "<sop>36<eop>", "36 24", "<sop>36 24", "<sop>a b<eop>"])
def test_malformed_tags_are_errors_that_show_the_right_form(tag):
    with pytest.raises(GlmImageInputError, match=r"<sop>H W<eop>"):
        GridShape.from_tag(tag)


def test_sizes_below_32px_or_beyond_the_limit_are_errors():
    with pytest.raises(GlmImageInputError, match="width=16 px is below"):
        GridShape.from_pixels(width=16, height=512)
    with pytest.raises(GlmImageInputError, match="height=4096 px is beyond"):
        GridShape.from_pixels(width=512, height=4096)
    with pytest.raises(GlmImageInputError, match="token_w must be a whole number of tokens >= 1 .32 px., got 0"):
        GridShape(4, 0)
    with pytest.raises(GlmImageInputError, match="token_h=65 tokens"):
        GridShape(65, 4)


def test_split_tags_accepts_the_upstream_examples_preview_tag_and_removes_both():
    text, shape = split_shape_tags("A cat<sop>36 24<eop><sop>19 13<eop>")
    assert text == "A cat" and shape == GridShape(36, 24)


def test_split_tags_rejects_a_wrong_second_tag_and_too_many():
    with pytest.raises(GlmImageInputError, match="not the preview grid"):
        split_shape_tags("A cat<sop>36 24<eop><sop>20 13<eop>")
    with pytest.raises(GlmImageInputError, match="3 <sop>H W<eop> tags"):
        split_shape_tags("<sop>4 3<eop><sop>18 13<eop><sop>4 3<eop>")
    with pytest.raises(GlmImageInputError, match="malformed"):
        split_shape_tags("A cat <sop>36 by 24<eop>")


def test_prompt_without_tag_is_unchanged():
    assert split_shape_tags("plain text") == ("plain text", None)
