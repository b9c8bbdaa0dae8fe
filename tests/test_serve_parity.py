"""The AR server gives the local node's tokens: a real vLLM-Omni server (tests/serve_harness.py) and the local
transformers model, same tiny weights (head_dim 32: vLLM's CPU attention needs >= 32).

Greedy ids are compared AND the log-probabilities of every sampled id within 1e-4: on a tiny random model
wrong decode positions can still give equal ids (see the README, "AR on a server"). Seeded sampling on the
server draws with vLLM's sampler, so it is checked for reproducibility, not against transformers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glmimage_core.ar.remote import RemoteSampling, generate_tokens_remote
from glmimage_core.ar.generation import SamplingSettings, generate_tokens
from glmimage_core.ar.chat_prompt import prepare_inputs
from glmimage_core.shapes import GridShape
from glmimage_core.tokens.grids import extract_prior

GREEDY = RemoteSampling(do_sample=False)
LOGPROB_TOLERANCE = 1e-4


def _inputs(ar, prompt: str, shape: GridShape | None = None, sources: int = 0):
    rng = np.random.default_rng(7)
    sizes = [(96, 128), (128, 64)][:sources]
    images = [torch.from_numpy(rng.random((h, w, 3), dtype=np.float32)) for h, w in sizes]
    inputs = prepare_inputs(ar.processor, prompt, shape=shape, images=images or None)
    inputs.model_identity = ar.identity()
    return inputs


def local_greedy(ar, inputs, images: int = 1):
    """The local node's greedy tokens, and the log-probability of each (from generate's raw logits)."""
    tokens = generate_tokens(ar, inputs, seed=0, sampling=SamplingSettings(do_sample=False), images=images)
    with torch.no_grad():
        out = ar.model.generate(**inputs.model_inputs, max_new_tokens=inputs.shape.max_new_tokens(inputs.mode),
                                do_sample=False, output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(out.logits, dim=1)[0].double()  # [steps, vocab]
    ids = out.sequences[0, inputs.input_length:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[:, None])[:, 0]
    return tokens, logprobs


def assert_same(ar, inputs, remote, images: int = 1) -> tuple[int, float]:
    local, local_lp = local_greedy(ar, inputs, images)
    assert remote.sequences.shape == local.sequences.shape
    assert torch.equal(remote.sequences, local.sequences), "ids differ from the local node's"
    diff = float((remote.logprobs - local_lp[None, :]).abs().max())
    assert diff < LOGPROB_TOLERANCE, f"logprobs differ by {diff}"
    assert remote.seeds == local.seeds and remote.mode == local.mode and remote.shape == local.shape
    assert remote.codebook_size == local.codebook_size and remote.image_end_id == local.image_end_id
    assert len(remote.source_grids) == len(local.source_grids)
    for mine, theirs in zip(remote.source_grids, local.source_grids):
        assert torch.equal(mine, theirs), "the server's source-image tokens differ from the local model's"
    extract_prior(remote)  # extraction takes the server's tokens unchanged
    print(f"PARITY {inputs.mode} {inputs.shape.describe()} x{images}: {remote.sequences.numel()} ids equal, "
          f"max logprob diff {diff:.2e}")
    return remote.sequences.numel(), diff


def test_text_to_image_at_a_non_square_size_equals_the_local_node(ar, ar_server):
    inputs = _inputs(ar, "a lighthouse at dusk", GridShape(4, 7))
    remote = generate_tokens_remote(ar_server.url, inputs, seed=0, sampling=GREEDY, logprobs=0)
    assert remote.sequences.shape == (1, inputs.shape.max_new_tokens("t2i"))
    assert_same(ar, inputs, remote)


@pytest.mark.parametrize("sources", [1, 2])
def test_image_to_image_equals_the_local_node_sources_included(ar, ar_server, sources):
    inputs = _inputs(ar, "make it blue", GridShape(3, 5), sources=sources)
    remote = generate_tokens_remote(ar_server.url, inputs, seed=0, sampling=GREEDY, logprobs=0, read_timeout=30)
    assert len(remote.source_grids) == sources and remote.mode == "i2i"
    assert [tuple(g.shape) for g in remote.source_grids] == inputs.source_grids
    assert_same(ar, inputs, remote)


def test_four_pictures_per_run_are_four_requests_equal_to_the_local_batch(ar, ar_server):
    inputs = _inputs(ar, "four cats", GridShape(3, 4))
    remote = generate_tokens_remote(ar_server.url, inputs, seed=11, sampling=GREEDY, images=4, logprobs=0)
    assert remote.seeds == [11, 12, 13, 14]
    local = generate_tokens(ar, inputs, seed=11, sampling=SamplingSettings(do_sample=False), images=4)
    assert torch.equal(remote.sequences, local.sequences)
    assert extract_prior(remote).batch_size == 4


def test_image_to_image_four_pictures_per_run_beside_a_text_request_each_gets_its_own_sources(ar, ar_server):
    """4 requests with the same two sources, sent together while a text-to-image request runs: every request
    is prefilled in the same engine steps, so the server must hand each its own pictures' ids (not one
    picture per request of the step, not a shared encoder output) and none to the text request."""
    import threading

    inputs = _inputs(ar, "make it blue", GridShape(3, 5), sources=2)
    text = _inputs(ar, "a lighthouse at dusk", GridShape(4, 4))
    beside: dict = {}
    thread = threading.Thread(target=lambda: beside.update(
        t2i=generate_tokens_remote(ar_server.url, text, seed=1, sampling=GREEDY)))
    thread.start()
    remote = generate_tokens_remote(ar_server.url, inputs, seed=21, sampling=GREEDY, images=4, read_timeout=30)
    thread.join(60)
    local = generate_tokens(ar, inputs, seed=21, sampling=SamplingSettings(do_sample=False), images=4)
    assert torch.equal(remote.sequences, local.sequences)
    assert len(remote.source_grids) == 2
    for mine, theirs in zip(remote.source_grids, local.source_grids):
        assert torch.equal(mine, theirs)
    assert beside["t2i"].source_grids == [] and beside["t2i"].mode == "t2i"
    assert torch.equal(beside["t2i"].sequences,
                       generate_tokens(ar, text, seed=1, sampling=SamplingSettings(do_sample=False)).sequences)


def test_seeded_sampling_repeats_and_other_seeds_differ(ar, ar_server):
    inputs = _inputs(ar, "a forest", GridShape(4, 4))
    sampling = RemoteSampling(do_sample=True, temperature=1.5, top_p=1.0, top_k=0)
    first = generate_tokens_remote(ar_server.url, inputs, seed=5, sampling=sampling, images=2)
    again = generate_tokens_remote(ar_server.url, inputs, seed=5, sampling=sampling, images=2)
    other = generate_tokens_remote(ar_server.url, inputs, seed=6, sampling=sampling)
    assert torch.equal(first.sequences, again.sequences)
    assert not torch.equal(first.sequences[0], first.sequences[1])
    assert torch.equal(first.sequences[1], other.sequences[0]), "picture i must be seed + i, alone or batched"
    assert not torch.equal(first.sequences[0], other.sequences[0])
