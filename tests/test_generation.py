"""Token generation against the reference (diffusers' generate_prior_tokens) and its error paths."""

import pytest
import torch

from glmimage_core.ar.loading import load_ar_model
from glmimage_core.demo.models import build_tiny_ar_model
from glmimage_core.errors import GlmImageInputError
from glmimage_core.tokens.grids import extract_prior
from glmimage_core.ar.generation import SamplingSettings, generate_tokens
from glmimage_core.ar.chat_prompt import prepare_inputs
from glmimage_core.memory.host import _NullProgress
from glmimage_core.shapes import GridShape


def _reference_pipeline(ar):
    from diffusers import GlmImagePipeline

    return GlmImagePipeline(tokenizer=None, processor=ar.processor, text_encoder=None,
                            vision_language_encoder=ar.model, vae=None, transformer=None, scheduler=None)


@pytest.mark.parametrize("width,height,seed", [(96, 128, 7), (192, 64, 123)])
def test_text_to_image_tokens_equal_diffusers_generate_prior_tokens(ar, width, height, seed):
    reference, _, _ = _reference_pipeline(ar).generate_prior_tokens(
        "a red fox", height, width, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed))
    inputs = prepare_inputs(ar.processor, "a red fox", GridShape.from_pixels(width=width, height=height))
    prior = extract_prior(generate_tokens(ar, inputs, seed=seed))
    assert prior.grids.shape == (1, height // 32, width // 32)
    assert torch.equal(prior.d16(), reference)


def test_image_to_image_tokens_equal_a_direct_transformers_run(ar):
    # diffusers' own i2i prior path crashes with transformers 5.23 (it torch.cat's a per-image list),
    # so the reference here is the same call it makes: the processor, torch.manual_seed, generate.
    img = torch.rand(96, 128, 3)
    inputs = prepare_inputs(ar.processor, "make it blue", GridShape(3, 4), images=[img])
    prior = extract_prior(generate_tokens(ar, inputs, seed=11))

    messages = [[{"role": "user", "content": [{"type": "image", "image": inputs.sources[0].pil()},
                                              {"type": "text", "text": "make it blue"}]}]]
    ref_inputs = ar.processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                                  processor_kwargs={"target_h": 96, "target_w": 128})
    torch.manual_seed(11)
    out = ar.model.generate(**ref_inputs, max_new_tokens=3 * 4 + 1, do_sample=True)
    expected = out[0, ref_inputs["input_ids"].shape[1]:][: 3 * 4].view(3, 4)
    assert torch.equal(prior.grids[0], expected)
    assert prior.mode == "i2i" and [tuple(g.shape) for g in prior.source_grids] == [(3, 4)]
    assert int(prior.source_grids[0].max()) < ar.codebook_size


def test_same_seed_same_tokens_other_seed_other_tokens_and_global_rng_untouched(ar):
    inputs = prepare_inputs(ar.processor, "a boat <sop>6 6<eop>")
    torch.manual_seed(99)
    before = torch.rand(3)
    torch.manual_seed(99)
    a = generate_tokens(ar, inputs, seed=5).sequences
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is not consumed
    b = generate_tokens(ar, inputs, seed=5).sequences
    c = generate_tokens(ar, inputs, seed=6).sequences
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_progress_gets_one_step_per_token(ar):
    inputs = prepare_inputs(ar.processor, "a boat <sop>2 3<eop>")
    progress = _NullProgress(inputs.shape.max_new_tokens("t2i"))
    tokens = generate_tokens(ar, inputs, seed=1, progress=progress)
    assert progress.current == tokens.sequences.shape[1] == inputs.shape.max_new_tokens("t2i")


def test_sampling_overrides_only_what_is_set():
    assert SamplingSettings().generate_kwargs() == {"do_sample": True}
    assert SamplingSettings(temperature=0.5, top_k=3).generate_kwargs() == {
        "do_sample": True, "temperature": 0.5, "top_k": 3}
    assert SamplingSettings(do_sample=False, temperature=0.5).generate_kwargs() == {"do_sample": False}


def test_greedy_is_deterministic_regardless_of_seed(ar):
    inputs = prepare_inputs(ar.processor, "a boat <sop>2 2<eop>")
    greedy = SamplingSettings(do_sample=False)
    assert torch.equal(generate_tokens(ar, inputs, seed=1, sampling=greedy).sequences,
                       generate_tokens(ar, inputs, seed=2, sampling=greedy).sequences)


@pytest.fixture(scope="module")
def eager_eos_ar(tmp_path_factory):
    """A model that always wants to end: its EOS row dominates the logits."""
    path = build_tiny_ar_model(tmp_path_factory.mktemp("eos") / "m", well_behaved=False)
    model = load_ar_model(str(path), dtype="fp32", device="cpu")
    with torch.no_grad():
        model.model.lm_head.weight[model.image_end_id] = model.model.lm_head.weight[:64].sum(0) * 50
    return model


def test_early_eos_is_an_error_that_says_how_many_tokens_came(eager_eos_ar):
    inputs = prepare_inputs(eager_eos_ar.processor, "x <sop>2 2<eop>", )
    tokens = generate_tokens(eager_eos_ar, inputs, seed=0, sampling=SamplingSettings(do_sample=False))
    with pytest.raises(GlmImageInputError, match=r"ended after 0 tokens, but .* needs 260 \(256 preview \+ 4 grid tokens\)"):
        extract_prior(tokens)


def test_out_of_range_id_inside_the_grid_is_an_error(ar):
    inputs = prepare_inputs(ar.processor, "x <sop>2 2<eop>")
    tokens = generate_tokens(ar, inputs, seed=0)
    offset = inputs.shape.grid_offset("t2i")
    tokens.sequences[0, offset + 2] = ar.image_start_id  # a BOS sampled inside the grid
    with pytest.raises(GlmImageInputError, match=r"put id 64 at grid position 2 \(after 2 good tokens of 4\)"):
        extract_prior(tokens)


def test_bad_seed_is_rejected(ar):
    with pytest.raises(GlmImageInputError, match="seed -1 is out of range"):
        generate_tokens(ar, prepare_inputs(ar.processor, "x <sop>1 1<eop>"), seed=-1)
