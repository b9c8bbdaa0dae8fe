"""N pictures in one batched generate: row i equals the single run with seed + i."""

import pytest
import torch

from glmimage_core.errors import GlmImageInputError
from glmimage_core.tokens.grids import extract_prior
from glmimage_core.ar.generation import SamplingSettings, generate_tokens
from glmimage_core.ar.chat_prompt import prepare_inputs
from glmimage_core.shapes import GridShape


@pytest.mark.parametrize("sampling", [SamplingSettings(), SamplingSettings(temperature=1.3, top_p=0.9, top_k=20)])
def test_text_to_image_batch_rows_equal_single_runs_with_derived_seeds(ar, sampling):
    inputs = prepare_inputs(ar.processor, "a red fox <sop>4 3<eop>")
    batch = generate_tokens(ar, inputs, seed=40, sampling=sampling, images=3)
    assert batch.seeds == [40, 41, 42] and batch.sequences.shape[0] == 3
    for i, seed in enumerate(batch.seeds):
        single = generate_tokens(ar, inputs, seed=seed, sampling=sampling)
        assert torch.equal(batch.sequences[i], single.sequences[0]), f"row {i} differs from seed {seed}"
    assert not torch.equal(batch.sequences[0], batch.sequences[1])
    prior = extract_prior(batch)
    assert prior.grids.shape == (3, 4, 3) and prior.seeds == [40, 41, 42]


def test_image_to_image_batch_rows_equal_single_runs(ar):
    inputs = prepare_inputs(ar.processor, "make it blue", GridShape(2, 3), images=[torch.rand(64, 96, 3)])
    batch = generate_tokens(ar, inputs, seed=7, images=2)
    for i, seed in enumerate(batch.seeds):
        single = generate_tokens(ar, inputs, seed=seed)
        assert torch.equal(batch.sequences[i], single.sequences[0])
    assert [tuple(g.shape) for g in extract_prior(batch).source_grids] == [(2, 3)]


def test_greedy_batch_is_n_copies(ar):
    inputs = prepare_inputs(ar.processor, "x <sop>2 2<eop>")
    batch = generate_tokens(ar, inputs, seed=0, sampling=SamplingSettings(do_sample=False), images=2)
    assert torch.equal(batch.sequences[0], batch.sequences[1])


def test_images_out_of_range(ar):
    with pytest.raises(GlmImageInputError, match="images=0"):
        generate_tokens(ar, prepare_inputs(ar.processor, "x <sop>1 1<eop>"), images=0)
