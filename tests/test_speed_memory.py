"""speed=compiled (and its fallback) and ComfyUI's model management of the pack's models."""

import gc

import pytest
import torch

from glmimage_core import ar_loading, decoder_loading
from glmimage_core.generation import generate_tokens
from glmimage_core.memory import comfy_loaded_count
from glmimage_core.prompting import prepare_inputs


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
    from glmimage_core.decoding import decode_prior
    from glmimage_core.demo_decoder import build_tiny_decoder
    from glmimage_core.prior import PriorTokens

    bundle = decoder_loading.load_decoder(str(build_tiny_decoder(tmp_path / "dec")), dtype="fp32", device="auto")
    prior = PriorTokens(grids=torch.randint(0, 64, (1, 2, 2)), mode="t2i", prompt="x", codebook_size=64)
    decode_prior(bundle, prior, steps=1)
    decode_prior(bundle, prior, steps=1)
    assert comfy_loaded_count(bundle) == 1
