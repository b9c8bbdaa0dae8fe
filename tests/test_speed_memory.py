"""speed=compiled (and its fallback) and ComfyUI's model management of the pack's models."""

import gc

import pytest
import torch

from glmimage_core.ar import loading as ar_loading
from glmimage_core.dit import loading as decoder_loading
from glmimage_core.ar.generation import generate_tokens
from glmimage_core.memory.comfy_memory import comfy_loaded_count
from glmimage_core.ar.chat_prompt import prepare_inputs


def test_compiled_falls_back_to_standard_on_cpu_with_a_clear_message(ar):
    inputs = prepare_inputs(ar.processor, "a boat <sop>2 3<eop>")
    compiled = generate_tokens(ar, inputs, seed=4, speed="compiled")
    standard = generate_tokens(ar, inputs, seed=4)
    assert compiled.notes == ["speed=compiled needs a CUDA GPU (torch.compile with CUDA graphs); on cpu it does "
                              "not pay off, so this run used speed=standard"]
    assert standard.notes == [] and torch.equal(compiled.sequences, standard.sequences)


def test_static_cache_path_gives_the_standard_tokens(ar):
    # The compiled path minus the compiler: a static KV cache sized from the shape.
    inputs = prepare_inputs(ar.processor, "a boat <sop>3 3<eop>")
    assert torch.equal(generate_tokens(ar, inputs, seed=9, speed="static").sequences,
                       generate_tokens(ar, inputs, seed=9).sequences)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="speed=compiled only compiles on a CUDA GPU")
def test_compiled_equals_standard_on_gpu(tiny_ar_dir):
    ar = ar_loading.load_ar_model(str(tiny_ar_dir), dtype="fp32", device="gpu")
    inputs = prepare_inputs(ar.processor, "a boat <sop>4 4<eop>")
    for _ in range(2):  # the second run reuses the compiled step
        compiled = generate_tokens(ar, inputs, seed=3, speed="compiled")
        assert compiled.notes == []
        assert torch.equal(compiled.sequences, generate_tokens(ar, inputs, seed=3).sequences)


def test_models_are_registered_once_with_comfyui_and_replaced_not_doubled(comfy_pack, tiny_hub_dir):
    import comfy.model_management as mm

    first = ar_loading.load_ar_model(str(tiny_hub_dir), dtype="fp32", device="auto")
    inputs = prepare_inputs(first.processor, "x <sop>1 2<eop>")
    generate_tokens(first, inputs, seed=0)
    generate_tokens(first, inputs, seed=1)
    assert comfy_loaded_count(first) == 1  # loaded through ComfyUI, once, however often it runs
    before = len(mm.current_loaded_models)

    second = ar_loading.load_ar_model(str(tiny_hub_dir), dtype="bf16", device="auto")
    assert comfy_loaded_count(first) == 0  # the replaced copy left ComfyUI's list
    generate_tokens(second, prepare_inputs(second.processor, "x <sop>1 2<eop>"), seed=0)
    assert comfy_loaded_count(second) == 1 and len(mm.current_loaded_models) == before
    assert [m for m in ar_loading.cached_models() if m.path == first.path] == [second]
    del first
    gc.collect()


def test_decoder_is_managed_by_comfyui_too(comfy_pack, tmp_path):
    from glmimage_core.dit.sampling import decode_prior
    from glmimage_core.demo.decoder import build_tiny_decoder
    from glmimage_core.payloads import PriorTokens

    bundle = decoder_loading.load_decoder(str(build_tiny_decoder(tmp_path / "dec")), dtype="fp32", device="auto")
    prior = PriorTokens(grids=torch.randint(0, 64, (1, 2, 2)), mode="t2i", prompt="x", codebook_size=64)
    decode_prior(bundle, prior, steps=1)
    decode_prior(bundle, prior, steps=1)
    # each part is its own managed model (ComfyUI pages them one at a time), registered once
    assert [comfy_loaded_count(part) for part in (bundle.dit, bundle.vae_model, bundle.glyph)] == [1, 1, 1]


def test_compiled_decode_step_is_one_graph_and_gives_the_standard_tokens(tiny_ar_dir):
    """torch.compile with fullgraph=True (any graph break raises) on the CPU with the eager backend: the
    decode step of GLM-Image (positions and embeddings looked up before the call) traces as one graph, gives
    the standard tokens in fp32, and a second run of the same shape compiles nothing new."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig

    ar = ar_loading.load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")
    config = CompileConfig(fullgraph=True, dynamic=False, backend="eager", mode=None)
    for prompt, images in (("a red fox <sop>3 4<eop>", None), ("make it blue", [torch.rand(64, 96, 3)])):
        inputs = prepare_inputs(ar.processor, prompt, images=images)
        compiled = generate_tokens(ar, inputs, seed=3, speed="compiled", compile_config=config)
        assert torch.equal(compiled.sequences, generate_tokens(ar, inputs, seed=3).sequences)
        assert compiled.notes[-1].startswith("speed=compiled: first run at 1 x ")
        graphs = counters["stats"]["unique_graphs"]
        again = generate_tokens(ar, inputs, seed=5, speed="compiled", compile_config=config)
        assert counters["stats"]["unique_graphs"] == graphs  # the compiled step was reused
        assert again.notes[-1].startswith("speed=compiled: reused the compiled step")
        assert torch.equal(again.sequences, generate_tokens(ar, inputs, seed=5).sequences)


def test_static_cache_in_bf16_samples_the_same_distribution(tiny_ar_dir):
    """In bf16 the static cache (what speed=compiled decodes with) rounds attention differently from the
    dynamic cache, so runs drift apart after a while: not the same tokens, but the same distribution. Over eight
    seeds of an image-to-image grid (no preview grid: 65 tokens a run): the first tokens agree, and the
    histograms of all sampled ids are within a total-variation distance of 0.25."""
    ar = ar_loading.load_ar_model(str(tiny_ar_dir), dtype="bf16", device="cpu")
    inputs = prepare_inputs(ar.processor, "make it red <sop>8 8<eop>", images=[torch.rand(64, 64, 3)])
    standard = torch.cat([generate_tokens(ar, inputs, seed=s).sequences for s in range(8)])
    static = torch.cat([generate_tokens(ar, inputs, seed=s, speed="static").sequences for s in range(8)])
    assert (standard[:, :4] == static[:, :4]).float().mean() >= 0.9
    codebook = ar.codebook_size + 2
    p = torch.bincount(standard.flatten(), minlength=codebook).float() / standard.numel()
    q = torch.bincount(static.flatten(), minlength=codebook).float() / static.numel()
    assert 0.5 * (p - q).abs().sum() < 0.25
