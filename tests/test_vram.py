"""ComfyUI cast layers, fp8 weights, partial (streamed) loading and the VRAM plan.

Everything runs on the CPU with ComfyUI's real model manager: a "partial load"
is ComfyUI's own lowvram state (layers flagged to cast per forward), which on a
CPU device copies nothing but runs exactly the code a GPU runs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from glmimage_core.memory import comfy_memory
from glmimage_core.demo import real_size
from glmimage_core.memory import vram_plan
from glmimage_core.ar.loading import load_ar_model
from glmimage_core.weights.cast_layers import HostEmbedding, make_castable, resolve_weight_dtype
from glmimage_core.errors import GlmImageInputError
from glmimage_core.ar.generation import generate_tokens
from glmimage_core.ar.chat_prompt import prepare_inputs


@pytest.fixture(scope="module")
def comfy_ar(comfy_pack, tiny_ar_dir):
    """The tiny AR model as the pack loads it inside ComfyUI (cast layers, embedding table in RAM)."""
    return load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")


def _streamed(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if getattr(m, "comfy_cast_weights", False))


def test_inside_comfyui_the_ar_model_has_cast_layers_and_its_embedding_table_stays_in_ram(comfy_ar):
    import comfy.ops

    model = comfy_ar.model
    assert isinstance(model.model.language_model.embed_tokens, HostEmbedding)
    assert "model.language_model.embed_tokens.weight" not in model.state_dict()  # invisible to ComfyUI
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, comfy.ops.disable_weight_init.Linear) for m in linears)
    norms = [m for m in model.modules() if type(m).__name__ == "CastableGlmImageRMSNorm"]
    assert norms and all(m.bias is None for m in norms)
    assert _streamed(model) == 0  # resident layers run plain torch maths


def test_castable_norms_match_the_upstream_formula_when_cast(comfy_pack):
    import comfy.ops
    from transformers.models.glm_image.modeling_glm_image import GlmImageRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    for cls in (GlmImageRMSNorm, T5LayerNorm):
        for dtype in (torch.float32, torch.bfloat16):
            norm = cls(64).to(dtype)
            with torch.no_grad():
                norm.weight.normal_()
            x = torch.randn(3, 5, 64, dtype=dtype) * 7
            expected = norm(x)
            castable = copy.deepcopy(norm)
            make_castable(castable, comfy.ops.disable_weight_init)
            castable.comfy_cast_weights = True  # what ComfyUI sets on a streamed layer
            assert torch.equal(castable(x), expected), (cls.__name__, dtype)


def test_make_castable_gives_the_layers_of_the_operations_class_it_is_given(comfy_pack):
    """Another op family (here manual_cast for every layer, as ComfyUI-GGUF's GGMLOps would be) plugs in."""
    import comfy.ops
    from transformers.models.glm_image.modeling_glm_image import GlmImageRMSNorm

    ops = comfy.ops.manual_cast
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Embedding(4, 8),
                                torch.nn.Conv2d(3, 3, 1), torch.nn.GroupNorm(1, 3), GlmImageRMSNorm(8),
                                torch.nn.Linear(8, 8))
    summary = make_castable(model, ops, torch.float8_e4m3fn, lambda name: name == "6")
    assert [type(m) for m in model[:5]] == [ops.Linear, ops.LayerNorm, ops.Embedding, ops.Conv2d, ops.GroupNorm]
    assert type(model[6]) is ops.Linear and model[6].weight.dtype == torch.float32  # kept out of fp8
    assert model[0].weight.dtype == torch.float8_e4m3fn and summary.fp8_layers == 1
    assert isinstance(model[5], GlmImageRMSNorm) and isinstance(model[5], comfy.ops.CastWeightBiasOp)
    assert not any(isinstance(m, comfy.ops.disable_weight_init.Linear) and type(m) is not ops.Linear
                   for m in model.modules())
    assert summary.not_castable == []


def test_partial_load_gives_exactly_the_tokens_of_a_full_load(comfy_ar):
    inputs = prepare_inputs(comfy_ar.processor, "a red fox <sop>4 5<eop>")
    full = generate_tokens(comfy_ar, inputs, seed=11)
    patcher = comfy_memory.patcher_of(comfy_ar)
    assert patcher.loaded_size() == patcher.model_size() and _streamed(comfy_ar.model) == 0
    budget = patcher.model_size() // 4
    partial = generate_tokens(comfy_ar, inputs, seed=11, vram_limit=budget)
    assert patcher.loaded_size() <= budget < patcher.model_size()
    assert _streamed(comfy_ar.model) > 10  # most layers went through ComfyUI's cast path
    assert torch.equal(partial.sequences, full.sequences)
    i2i = prepare_inputs(comfy_ar.processor, "make it blue", images=[torch.rand(64, 96, 3)])
    streamed = generate_tokens(comfy_ar, i2i, seed=2, vram_limit=budget)  # vision tower + VQ streamed/pinned
    assert torch.equal(streamed.sequences, generate_tokens(comfy_ar, i2i, seed=2).sequences)
    assert torch.equal(streamed.source_grids[0], generate_tokens(comfy_ar, i2i, seed=2).source_grids[0])


def test_comfyui_accounting_matches_the_reported_bytes(comfy_pack, tiny_ar_dir):
    for weight_dtype in ("default", "fp8_e4m3fn"):
        ar = load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu", weight_dtype=weight_dtype)
        generate_tokens(ar, prepare_inputs(ar.processor, "x <sop>2 2<eop>"), seed=0)
        patcher = comfy_memory.patcher_of(ar)
        reported = vram_plan.resident_bytes(ar.inventory, vram_plan.WeightOption(weight_dtype))
        assert patcher.model_size() == reported == patcher.loaded_size(), weight_dtype
    assert ar.model.lm_head.weight.dtype == torch.float32  # the output head keeps its dtype
    assert ar.model.model.language_model.layers[0].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    assert ar.model.model.vqmodel.quantize.embedding.weight.dtype == torch.float32


def _dequantized(model: torch.nn.Module, fp8: torch.dtype, keep: tuple[str, ...]) -> torch.nn.Module:
    """A plain copy whose Linear weights went through fp8 and back: what fp8 storage may compute at best."""
    reference = copy.deepcopy(model)
    for name, module in reference.named_modules():
        if isinstance(module, torch.nn.Linear) and not vram_plan.name_matches(name, keep):
            module.weight.data = module.weight.data.to(fp8).to(module.weight.dtype)
    return reference


@pytest.fixture(scope="module")
def real_size_ar():
    # Real layer sizes (4096 hidden, 13696 MLP, 32/2 heads, 1536-wide vision); a short text vocabulary, since
    # the embedding table never goes to fp8 and only costs build time here.
    return real_size.build_ar(layers=1, vision_depth=1, vocab_size=real_size.IMAGE_END + 1 + 512)


#: Stated tolerances (relative L2 error of fp8 storage against bf16, random weights at the real layer sizes;
#: measured 0.097/0.153 (AR logits) and 0.037/0.050 (DiT noise prediction) for e4m3fn/e5m2).
FP8_TOLERANCE = {"ar": {"fp8_e4m3fn": 0.13, "fp8_e5m2": 0.20}, "dit": {"fp8_e4m3fn": 0.05, "fp8_e5m2": 0.07}}


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_ar_logits_stay_within_the_stated_tolerance_of_bf16(comfy_pack, real_size_ar, weight_dtype):
    import comfy.ops

    fp8 = resolve_weight_dtype(weight_dtype)
    ids = torch.randint(real_size.IMAGE_END + 1, real_size.IMAGE_END + 512, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = real_size_ar(input_ids=ids).logits.float()
        rounded = _dequantized(real_size_ar, fp8, vram_plan.AR_FP8_KEEP)(input_ids=ids).logits.float()
        model = copy.deepcopy(real_size_ar)
        summary = make_castable(model, comfy.ops.disable_weight_init, fp8,
                                lambda n: vram_plan.name_matches(n, vram_plan.AR_FP8_KEEP), comfy.ops.manual_cast)
        stored = model(input_ids=ids).logits.float()
    assert summary.fp8_layers == 6 + 4  # text q/k/v/o, gate_up, down; vision qkv, proj, fc1, fc2
    # fp8 only stores the weights: the maths runs in bf16 on exactly the fp8-rounded weights.
    torch.testing.assert_close(stored, rounded, rtol=0, atol=0)
    error = ((stored - reference).norm() / reference.norm()).item()
    assert error < FP8_TOLERANCE["ar"][weight_dtype], error


@pytest.fixture(scope="module")
def real_size_dit():
    return real_size.build_dit(layers=1)


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_dit_noise_prediction_stays_within_the_stated_tolerance_of_bf16(comfy_pack, real_size_dit,
                                                                            weight_dtype):
    import comfy.ops

    fp8 = resolve_weight_dtype(weight_dtype)
    dit = copy.deepcopy(real_size_dit)
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, 16, 16, 16, generator=g).bfloat16(),
                  encoder_hidden_states=torch.randn(1, 8, 1472, generator=g).bfloat16(),
                  prior_token_id=torch.randint(0, real_size.CODEBOOK, (1, 64), generator=g),
                  prior_token_drop=torch.zeros(1, 64, dtype=torch.bool), timestep=torch.tensor([500.0]),
                  target_size=torch.tensor([[128.0, 128.0]]), crop_coords=torch.zeros(1, 2), return_dict=False)
    with torch.no_grad():
        reference = dit(**kwargs)[0].float()
        rounded = _dequantized(dit, fp8, vram_plan.DIT_FP8_KEEP)(**kwargs)[0].float()
        make_castable(dit, comfy.ops.disable_weight_init, fp8, lambda n: vram_plan.name_matches(n, vram_plan.DIT_FP8_KEEP),
                      comfy.ops.manual_cast)
        stored = dit(**kwargs)[0].float()
    torch.testing.assert_close(stored, rounded, rtol=0, atol=0)
    error = ((stored - reference).norm() / reference.norm()).item()
    assert error < FP8_TOLERANCE["dit"][weight_dtype], error


def test_real_size_bytes_per_option_match_the_published_figures():
    ar = real_size.build_ar(device="meta")
    inv = vram_plan.inventory(ar, vram_plan.classify_ar, torch.bfloat16, host=vram_plan.AR_HOST_EMBEDDINGS)
    assert abs(inv.total_numel_bytes / vram_plan.GIB - 18.84) < 0.01  # "AR 18.84 GiB in bf16"
    fp8 = vram_plan.resident_bytes(inv, vram_plan.WeightOption("fp8_e4m3fn"))
    assert abs((fp8 + inv.host_bytes) / vram_plan.GIB - 10.2) < 0.05  # "~10.2 GiB ... in fp8"
    assert abs(inv.host_bytes / vram_plan.GIB - 1.28) < 0.01  # the embedding table kept in RAM
    dit = real_size.build_dit(device="meta")
    dinv = vram_plan.inventory(dit, vram_plan.classify_dit, torch.bfloat16)
    assert abs(vram_plan.resident_bytes(dinv, vram_plan.WeightOption()) / vram_plan.GIB - 12.9) < 0.02
    assert abs(vram_plan.resident_bytes(dinv, vram_plan.WeightOption("fp8_e4m3fn")) / vram_plan.GIB - 6.5) < 0.05


def test_plan_message_names_the_options_that_fit():
    gib = vram_plan.GIB
    options = [vram_plan.WeightOption(), vram_plan.WeightOption("fp8_e4m3fn"), vram_plan.WeightOption(quantization="nf4")]
    needs = [vram_plan.Need(o, o.label("bf16"), w, int(0.6 * gib)) for o, w in zip(options, (18.9 * gib, 9.6 * gib, 6 * gib))]
    text = vram_plan.plan_message("the AR model", needs[0], int(15.1 * gib), needs, "1024x1024 px", "allow streaming")
    assert text.startswith("the AR model bf16 needs ~19.5 GB at 1024x1024 px")
    assert "15.1 GB free: choose weight_dtype fp8_e4m3fn (~10.2 GB) or quantization nf4 (~6.6 GB)" in text
    short = vram_plan.plan_message("the AR model", needs[0], int(7 * gib), needs, "1024x1024 px", "allow streaming")
    assert "choose quantization nf4 (~6.6 GB)" in short and "fp8" not in short
    none = vram_plan.plan_message("the AR model", needs[0], 4 * gib, needs, "1024x1024 px", "allow streaming")
    assert "even quantization nf4 needs ~6.6 GB" in none and "allow streaming" in none


def test_ar_working_memory_grows_with_the_picture(comfy_ar):
    from glmimage_core.ar.residency import ar_working_bytes

    small = prepare_inputs(comfy_ar.processor, "x <sop>8 8<eop>")
    big = prepare_inputs(comfy_ar.processor, "x <sop>32 32<eop>")
    assert ar_working_bytes(comfy_ar, big, 1) > ar_working_bytes(comfy_ar, small, 1) > 0
    assert ar_working_bytes(comfy_ar, big, 4) > 3 * ar_working_bytes(comfy_ar, big, 1) // 2


def test_bad_weight_dtype_choices_are_named(comfy_pack, tiny_ar_dir, monkeypatch):
    with pytest.raises(GlmImageInputError, match=r"weight_dtype 'fp16_fast' is not one of \['default', 'fp8_e4m3fn'"):
        load_ar_model(str(tiny_ar_dir), weight_dtype="fp16_fast")
    with pytest.raises(GlmImageInputError, match="choose one"):
        load_ar_model(str(tiny_ar_dir), weight_dtype="fp8_e4m3fn", quantization="nf4")
    monkeypatch.delattr(torch, "float8_e5m2")  # a PyTorch built without float8 types
    with pytest.raises(GlmImageInputError, match="weight_dtype fp8_e5m2 needs a PyTorch with float8 types"):
        resolve_weight_dtype("fp8_e5m2")


def test_a_model_that_cannot_run_even_streamed_is_refused_with_what_would_help():
    gib = vram_plan.GIB
    assert vram_plan.streaming_message("GLM-Image's DiT", gib // 4, gib, 4 * gib, "1024x1024 px") is None
    text = vram_plan.streaming_message("GLM-Image's DiT", gib // 4, 3 * gib, 2 * gib, "2048x2048 px")
    assert text.startswith("GLM-Image's DiT cannot run even with its layers streamed at 2048x2048 px: one layer "
                           "(256 MB) plus working memory (3.0 GB) need ~3.2 GB, 2.0 GB free")
    assert "smaller picture" in text
    layer = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    assert vram_plan.largest_layer_bytes(layer) == (8 * 16 + 16) * 4
