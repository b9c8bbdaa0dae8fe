"""Single files loaded inside ComfyUI (its cast layers, in-process; run on ComfyUI 0.3.75 and 0.33.0): each format
round-trips to the folder's tokens and pixels, fp8 files keep exactly their rounded weights, and ComfyUI's own
code reads the pack's fp8 files as the pack does.

Stated tolerances: bf16 files give exactly the folder's weights, tokens and pixels. fp8 files: the weights are
exactly the rounded ones (test_weight_files.py), the DiT's pixels stay within FP8_PIXEL_TOL (max |difference| in
0..1) of the bf16 folder's on the tiny random models, the AR model's logits within FP8_LOGIT_TOL of bf16's
largest logit (the tiny random models have no margin to keep greedy tokens equal after rounding).
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch

FP8_PIXEL_TOL = 0.15
FP8_LOGIT_TOL = 0.15
FORMATS = [("bf16", None), ("fp8_e4m3fn", "comfy_quant"), ("fp8_e4m3fn", "scaled_fp8")]


@pytest.fixture(scope="module")
def pk(comfy_pack):
    def module(name: str):
        return importlib.import_module(f"{comfy_pack.__name__}.{name}")
    return module


@pytest.fixture(scope="module")
def hub(pk, tmp_path_factory):
    return pk("glmimage_core.demo.decoder").build_tiny_full_hub_layout(tmp_path_factory.mktemp("wfc") / "GLM-Image")


@pytest.fixture(scope="module")
def files(pk, hub, tmp_path_factory):
    convert, formats = pk("glmimage_core.weights.convert"), pk("glmimage_core.weights.formats")
    out, made = tmp_path_factory.mktemp("models"), {}
    for fmt, convention in FORMATS:
        dirs = {part: out / convert.COMFY_FOLDERS[part] for part in formats.PARTS}
        for part, path in zip(formats.PARTS, convert.convert(hub, list(formats.PARTS), dirs, fmt, convention)):
            made[(part, fmt, convention)] = str(path)
    return made


def pixels(pk, dit, vae_model, glyph, steps=8, seed=3):
    import comfy.sample

    nm, vae = pk("glmimage_comfy.native_patcher"), pk("glmimage_comfy.vae")
    model, comfy_vae = nm.native_model(dit), vae.comfy_vae(vae_model)
    grids = torch.randint(0, 64, (2, 4, 3), generator=torch.Generator().manual_seed(seed))
    prior = pk("glmimage_core.payloads").PriorTokens(grids=grids, mode="t2i", prompt='a sign "OPEN"', codebook_size=64)
    cond = pk("glmimage_comfy.token_conditioning").build_conditioning(model, glyph, prior, None, comfy_vae, None)
    latent = cond.latent["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(cond.model, noise, steps, 1.5, "euler", "simple", cond.positive, cond.negative,
                                  latent, seed=seed, disable_pbar=True)
    return comfy_vae.decode(samples).float()


@pytest.fixture(scope="module")
def folder_pixels(pk, hub):
    dl = pk("glmimage_core.dit.loading")
    return pixels(pk, dl.load_dit(str(hub), "bf16", "cpu"), dl.load_vae(str(hub), "bf16", "cpu"),
                  dl.load_glyph_encoder(str(hub), "bf16", "cpu"))


@pytest.mark.parametrize("fmt, convention", FORMATS)
def test_decoder_files_render_the_folders_picture(pk, files, folder_pixels, fmt, convention):
    dl = pk("glmimage_core.dit.loading")
    dit = dl.load_dit(files[("dit", fmt, convention)], "bf16", "cpu")
    vae = dl.load_vae(files[("vae", fmt, convention)], "bf16", "cpu")
    glyph = dl.load_glyph_encoder(files[("glyph", fmt, convention)], "bf16", "cpu")
    ours = pixels(pk, dit, vae, glyph)
    assert ours.shape == folder_pixels.shape == (2, 128, 96, 3)
    if fmt == "bf16":
        assert torch.equal(ours, folder_pixels)
        assert dit.weight_dtype.label == "default"
    else:
        assert dit.weight_dtype.label == fmt
        linears = [m for m in dit.transformer.modules() if type(m).__name__ == "ScaledFP8Linear"]
        assert len(linears) > 10 and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
        difference = (ours - folder_pixels).abs().max()
        assert 0 < difference < FP8_PIXEL_TOL


def test_the_folder_kept_in_fp8_is_read_lean_into_the_weights_the_whole_model_conversion_gave(pk, hub):
    dl, fp8 = pk("glmimage_core.dit.loading"), pk("glmimage_core.weights.fp8")
    bf16 = dl.load_dit(str(hub), "bf16", "cpu").transformer.state_dict()
    bf16 = {k: v.clone() for k, v in bf16.items()}
    lean = dl.load_dit(str(hub), "bf16", "cpu", weight_dtype="fp8_e4m3fn").transformer.state_dict()
    assert lean.keys() == bf16.keys()
    rounded = 0
    for key, value in lean.items():
        if value.dtype == torch.float8_e4m3fn:
            assert torch.equal(value.view(torch.uint8), fp8.cast_fp8(bf16[key], torch.float8_e4m3fn).view(torch.uint8))
            rounded += 1
        else:
            assert torch.equal(value, bf16[key])
    assert rounded > 10


def greedy(pk, ar, prompt="a red fox <sop>2 2<eop>"):
    gen, chat = pk("glmimage_core.ar.generation"), pk("glmimage_core.ar.chat_prompt")
    inputs = chat.prepare_inputs(ar.processor, prompt)
    return gen.generate_tokens(ar, inputs, seed=0, sampling=gen.SamplingSettings(do_sample=False)).sequences


def logits(ar, prompt="a red fox"):
    batch = ar.processor(text=[prompt], return_tensors="pt")
    with torch.no_grad():
        return ar.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


@pytest.fixture(scope="module")
def folder_ar(pk, hub):
    """The hub folder's AR model at bf16: its greedy tokens and logits, computed once."""
    folder = pk("glmimage_core.ar.loading").load_ar_model(str(hub), dtype="bf16", device="cpu")
    return folder, greedy(pk, folder), logits(folder)


@pytest.mark.parametrize("fmt, convention", FORMATS)
def test_ar_files_give_the_folders_tokens(pk, files, folder_ar, fmt, convention):
    folder, reference, reference_logits = folder_ar
    ar = pk("glmimage_core.ar.loading").load_ar_model(files[("ar", fmt, convention)], dtype="bf16", device="cpu")
    assert ar.processor.tokenizer.get_vocab() == folder.processor.tokenizer.get_vocab()
    assert ar.processor.tokenizer.chat_template == folder.processor.tokenizer.chat_template
    assert ar.model.generation_config.to_dict() == folder.model.generation_config.to_dict()
    if fmt == "bf16":
        assert torch.equal(logits(ar), reference_logits)
        assert torch.equal(greedy(pk, ar), reference)
    else:
        assert ar.weight_dtype.label == fmt
        difference = (logits(ar) - reference_logits).abs().max() / reference_logits.abs().max()
        assert 0 < difference < FP8_LOGIT_TOL


def test_comfyuis_own_code_reads_the_packs_fp8_files_as_the_pack_does(pk, files):
    """ComfyUI 0.33: its comfy_quant Linear loads a layer of the pack's file into the weight the pack computes, and
    its `convert_old_quants` turns the pack's scaled_fp8 file into the pack's comfy_quant layout. 0.3.75: its
    scaled_fp8 Linear computes what the pack's scaled Linear computes."""
    import comfy.ops
    import comfy.utils
    from safetensors.torch import load_file

    fp8 = pk("glmimage_core.weights.fp8")
    quant = load_file(files[("dit", "fp8_e4m3fn", "comfy_quant")])
    scaled = load_file(files[("dit", "fp8_e4m3fn", "scaled_fp8")])
    layer = "transformer_blocks.0.attn1.to_q"
    weight, scale = quant[f"{layer}.weight"], quant[f"{layer}.weight_scale"]
    ours = fp8.dequantize(weight, scale, torch.bfloat16)
    x = torch.randn(64, weight.shape[1], dtype=torch.bfloat16)  # more input than weight: 0.3.75 scales the weight
    if hasattr(comfy.utils, "convert_old_quants"):  # ComfyUI 0.33
        converted, _ = comfy.utils.convert_old_quants(dict(scaled), "", {})
        assert set(converted) == set(quant)
        assert all(torch.equal(converted[k].reshape(-1).view(torch.uint8), quant[k].reshape(-1).view(torch.uint8))
                   for k in quant if k.endswith((".weight", ".weight_scale")))
        ops = comfy.ops.mixed_precision_ops({}, torch.bfloat16)
        linear = ops.Linear(weight.shape[1], weight.shape[0], bias=f"{layer}.bias" in quant)
        state = {k[len(layer) + 1:]: v for k, v in quant.items() if k.startswith(layer + ".")}
        linear.load_state_dict(state, strict=False)
        assert torch.equal(linear.weight.dequantize().to(torch.bfloat16), ours)
    else:  # ComfyUI 0.3.75
        ops = comfy.ops.scaled_fp8_ops()
        linear = ops.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float8_e4m3fn)
        linear.weight = torch.nn.Parameter(scaled[f"{layer}.weight"], requires_grad=False)
        linear.scale_weight = torch.nn.Parameter(scaled[f"{layer}.scale_weight"], requires_grad=False)
        assert torch.equal(linear(x), torch.nn.functional.linear(x, ours))
    assert json.loads(bytes(quant[f"{layer}.comfy_quant"].tolist())) == {"format": "float8_e4m3fn"}
