"""GGUF files of the AR model and the DiT (issue 19, section 3): written by the pack, read through ComfyUI-GGUF.

ComfyUI-GGUF (city96, Apache-2.0) is not part of the pack: its source snapshot
(../shared/vendor/comfyui-gguf-795e451.tar.gz, or GLMIMAGE_COMFYUI_GGUF_TAR) is unpacked at test time into a
temporary folder put on sys.path, where glmimage_comfy/gguf_ops.py finds it as it finds it in custom_nodes
(tests/integration/test_gguf_server.py: in a real server's custom_nodes, loaded by ComfyUI itself).

Stated tolerances against the same tiny model loaded from its bf16 folder (the tiny DiT is built with
attention_head_dim 32 so that its matrices are quantized at all; measured on the CPU, 32 greedy AR tokens
teacher-forced, 8 Euler steps of a 2 x 96 x 128 picture):

    qtype   AR max |logit diff| (logits up to ~4.4)   DiT mean / max |pixel diff| (0..1)
    Q8_0    0.06   (limit 0.2)                        0.003 / 0.055  (limits 0.01 / 0.15)
    Q5_1    0.45   (limit 1.0)                        0.005 / 0.086  (limits 0.015 / 0.25)
    Q5_0    0.50   (limit 1.0)                        0.005 / 0.078  (limits 0.015 / 0.25)
    Q4_1    0.73   (limit 1.5)                        0.008 / 0.133  (limits 0.025 / 0.35)
    Q4_0    0.75   (limit 1.5)                        0.008 / 0.178  (limits 0.025 / 0.35)

Greedy tokens are compared only at the first step (equal for every qtype): the tiny random model's codebook
logits lie within a few hundredths of each other, so under teacher forcing the GGUF models' argmax matched
the bf16 tokens at 78 % (Q8_0), 25-69 % (Q5) and 59-66 % (Q4) of the 32 steps, and free-running greedy
sequences part after a few tokens (bf16 against fp32 too).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glmimage_core.errors import GlmImageInputError
from tests.comfy_harness import COMFYUI_GGUF_TARBALL, unpack_comfyui_gguf

gguf = pytest.importorskip("gguf", reason="the package gguf (requirements.txt) is not installed")

REPO = Path(__file__).resolve().parents[1]
QTYPES = ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
AR_LOGIT_LIMIT = {"q8_0": 0.2, "q5_1": 1.0, "q5_0": 1.0, "q4_1": 1.5, "q4_0": 1.5}
DIT_PIXEL_LIMITS = {"q8_0": (0.01, 0.15), "q5_1": (0.015, 0.25), "q5_0": (0.015, 0.25), "q4_1": (0.025, 0.35),
                    "q4_0": (0.025, 0.35)}


@pytest.fixture(scope="module")
def comfyui_gguf_dir(tmp_path_factory) -> Path:
    folder = unpack_comfyui_gguf(tmp_path_factory.mktemp("gguf_pack"))
    if folder is None:
        pytest.fail(f"ComfyUI-GGUF's source snapshot is not at {COMFYUI_GGUF_TARBALL} (set GLMIMAGE_COMFYUI_GGUF_TAR)")
    sys.path.append(str(folder.parent))
    yield folder
    sys.path.remove(str(folder.parent))


@pytest.fixture(scope="module")
def pk(comfy_pack, comfyui_gguf_dir):
    def module(name: str):
        return importlib.import_module(f"{comfy_pack.__name__}.{name}")
    module("glmimage_comfy.gguf_ops").install()
    yield module
    module("glmimage_core.weights.gguf_format").set_tensor_source(None)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout

    return build_tiny_full_hub_layout(tmp_path_factory.mktemp("gguf_hub") / "GLM-Image", attention_head_dim=32)


@pytest.fixture(scope="module")
def files(hub, tmp_path_factory) -> dict:
    """(part, qtype) -> the GGUF file `convert` wrote."""
    from glmimage_core.weights import convert

    out = tmp_path_factory.mktemp("gguf_files")
    return {(part, q): convert.convert_part(hub, part, out, f"gguf_{q}") for q in QTYPES for part in ("ar", "dit")}


# --------------------------------------------------------------------------- writing


def test_convert_writes_gguf_for_the_ar_model_and_the_dit_and_bf16_for_the_rest(hub, tmp_path):
    from glmimage_core.weights import convert, formats

    dirs = {part: tmp_path / convert.COMFY_FOLDERS[part] for part in formats.PARTS}
    written = convert.convert(hub, list(formats.PARTS), dirs, "gguf_q4_0")
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "text_encoders/glm_image_ar_q4_0.gguf", "diffusion_models/glm_image_dit_q4_0.gguf",
        "vae/glm_image_vae_bf16.safetensors", "text_encoders/glm_image_glyph_bf16.safetensors"]
    for path, part in zip(written, formats.PARTS):
        source = formats.inspect(path, want=part)
        assert source.part == part
        assert source.storage == ("gguf:Q4_0" if part in ("ar", "dit") else "bf16")
    assert formats.inspect(written[0]).config["model_type"] == "glm_image"
    assert "processor/tokenizer.json" in formats.inspect(written[0]).files
    assert "scheduler/scheduler_config.json" in formats.inspect(written[1]).files
    with pytest.raises(GlmImageInputError, match="exists"):
        convert.convert(hub, ["dit"], dirs, "gguf_q4_0")
    assert not list(tmp_path.rglob(".*partial*")) and not list(tmp_path.rglob(".*.part"))


def test_a_cancelled_gguf_conversion_leaves_no_file(hub, tmp_path):
    from glmimage_core.weights import convert

    calls = []

    def cancel() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        convert.convert(hub, ["ar"], {"ar": tmp_path}, "gguf_q8_0", check_cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_only_big_linear_weights_are_quantized_the_rest_keeps_its_precision(files):
    from glmimage_core.weights import gguf_files

    for part in ("ar", "dit"):
        types = gguf_files.qtype_names(files[(part, "q4_0")])
        quantized = {name for name, t in types.items() if t == "Q4_0"}
        assert quantized, part
        assert all(name.endswith(".weight") for name in quantized)
        kept = ("layernorm", "embed", "lm_head", "vqmodel", "time_condition_embed", "proj_out", "norm_out")
        assert not [name for name in quantized if any(word in name for word in kept)], part
        assert all(t in ("F32", "Q4_0") for t in types.values()), set(types.values())  # the tiny models are fp32
    ar = gguf_files.qtype_names(files[("ar", "q8_0")])
    assert ar["model.language_model.layers.0.self_attn.q_proj.weight"] == "Q8_0"
    assert ar["model.language_model.layers.0.input_layernorm.weight"] == "F32"
    assert ar["lm_head.weight"] == "F32" and ar["model.language_model.embed_tokens.weight"] == "F32"


def test_written_tensors_are_the_gguf_packages_quantization_of_the_source(hub, files):
    """The file holds exactly `gguf.quants.quantize` of each source tensor: dequantised by the gguf package it
    equals the gguf package's own round trip of the folder's tensor, bit for bit (and kept tensors are exact)."""
    from glmimage_core.weights import formats, gguf_files

    for (part, q), path in files.items():
        written = gguf_files.dequantized(path)
        types = gguf_files.qtype_names(path)
        with formats.open_tensors(formats.inspect(hub / formats.HUB_FOLDERS[part], want=part)) as reader:
            assert set(written) == set(reader.keys())
            for name, tensor in written.items():
                source = reader.read(name).float()
                qtype = gguf.GGMLQuantizationType[types[name]]
                flat = source.numpy().reshape(-1, gguf.GGML_QUANT_SIZES[qtype][0]) if qtype.name.startswith("Q") \
                    else source.numpy()
                expected = gguf.quants.dequantize(gguf.quants.quantize(flat, qtype), qtype).reshape(source.shape)
                assert torch.equal(tensor, torch.from_numpy(np.array(expected))), (part, q, name)


def test_comfyui_gguf_dequantises_every_written_tensor_as_the_gguf_package_does(pk, files):
    """ComfyUI-GGUF's torch dequantisation (what its layers run on every forward) of each file equals
    `gguf.quants.dequantize`, bit for bit, when it computes in float32 (its `dequant_dtype` float32). With its
    default (block scales in fp16, as stored) a value differs by at most one fp16 rounding, measured 1.4e-4
    at most on weights of magnitude ~0.1; layers then cast to the compute dtype (bf16) anyway."""
    from glmimage_core.weights import gguf_files

    gg = pk("glmimage_comfy.gguf_ops").comfyui_gguf()
    for (part, q), path in files.items():
        reference = gguf_files.dequantized(path)
        loaded = pk("glmimage_comfy.gguf_ops").read_state_dict(path, part)
        assert set(loaded) == set(reference)
        for name, tensor in loaded.items():
            ours = gg.dequant.dequantize_tensor(tensor, torch.float32, torch.float32).as_subclass(torch.Tensor)
            assert torch.equal(ours.reshape(reference[name].shape), reference[name]), (part, q, name)
            default = gg.dequant.dequantize_tensor(tensor, torch.float32).as_subclass(torch.Tensor)
            assert torch.allclose(default.reshape(reference[name].shape), reference[name], rtol=2e-3, atol=2e-4)


def test_a_gguf_file_of_another_model_is_refused_by_its_architecture(tmp_path):
    from glmimage_core.weights import formats

    path = tmp_path / "flux1-dev-Q4_0.gguf"
    writer = gguf.GGUFWriter(path, arch="flux")
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(formats.Foreign, match=r"flux1-dev-Q4_0\.gguf.*GGUF file of another model \(architecture 'flux'\)"):
        formats.inspect(path, want="dit")


def test_a_gguf_file_keeps_its_quantization(files):
    from glmimage_core.dit.loading import load_dit

    with pytest.raises(GlmImageInputError, match="is stored as gguf:Q8_0 and is kept so; choose weight_dtype default"):
        load_dit(str(files[("dit", "q8_0")]), dtype="bf16", device="cpu", weight_dtype="fp8_e4m3fn")


# --------------------------------------------------------------------------- loading through ComfyUI-GGUF


def _forced(ref_tokens: torch.Tensor, start: int):
    from transformers import LogitsProcessor

    class Forced(LogitsProcessor):
        """Teacher forcing: every step continues with the reference's token, whatever the model scores."""

        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, -1e9)
            out[:, ref_tokens[0, input_ids.shape[1] - start]] = 0
            return out

    return Forced()


def _logits(ar, inputs, n: int, ref_tokens=None):
    extra = {"logits_processor": [_forced(ref_tokens, inputs.input_length)]} if ref_tokens is not None else {}
    with torch.no_grad():
        out = ar.model.generate(**inputs.model_inputs, max_new_tokens=n, do_sample=False, output_logits=True,
                                return_dict_in_generate=True, **extra)
    return out.sequences[:, inputs.input_length:], torch.stack(out.logits, 1).float()


@pytest.fixture(scope="module")
def ar_reference(pk, hub):
    ar = pk("glmimage_core.ar.loading").load_ar_model(str(hub), dtype="bf16", device="cpu")
    inputs = pk("glmimage_core.ar.chat_prompt").prepare_inputs(ar.processor, "a boat <sop>4 6<eop>")
    tokens, logits = _logits(ar, inputs, 32)
    return inputs, tokens, logits


@pytest.mark.parametrize("q", QTYPES)
def test_gguf_ar_model_loads_into_ggmlops_layers_and_scores_within_tolerance_of_bf16(pk, files, ar_reference, q):
    inputs, tokens, logits = ar_reference
    gg = pk("glmimage_comfy.gguf_ops").comfyui_gguf()
    ar = pk("glmimage_core.ar.loading").load_ar_model(str(files[("ar", q)]), dtype="bf16", device="cpu")
    q_proj = ar.model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, gg.ops.GGMLOps.Linear) and q_proj.weight.tensor_type.name == q.upper()
    assert not gg.dequant.is_quantized(ar.model.lm_head.weight) and ar.model.lm_head.weight.dtype == torch.bfloat16
    _, ours = _logits(ar, inputs, 32, tokens)
    diff = (ours - logits).abs().max().item()
    assert diff <= AR_LOGIT_LIMIT[q], f"{q}: max |logit difference| {diff:.3f} > {AR_LOGIT_LIMIT[q]}"
    assert torch.equal(ours[:, 0].argmax(-1), tokens[:, 0])  # the first token: the logits after the prompt


@pytest.fixture(scope="module")
def dit_reference(pk, hub):
    bundle = pk("glmimage_core.dit.loading").load_decoder(str(hub), dtype="bf16", device="cpu")
    grids = torch.randint(0, 64, (2, 4, 3), generator=torch.Generator().manual_seed(0))
    prior = pk("glmimage_core.payloads").PriorTokens(grids=grids, mode="t2i", prompt='A sign "OPEN"',
                                                      codebook_size=64)
    picture = pk("glmimage_core.dit.sampling").decode_prior(bundle, prior, steps=8, guidance=1.5, seed=3)
    return bundle, prior, picture


@pytest.mark.parametrize("q", QTYPES)
def test_gguf_dit_loads_into_ggmlops_layers_and_paints_within_tolerance_of_bf16(pk, files, dit_reference, q):
    bundle, prior, picture = dit_reference
    gg = pk("glmimage_comfy.gguf_ops").comfyui_gguf()
    dit = pk("glmimage_core.dit.loading").load_dit(str(files[("dit", q)]), dtype="bf16", device="cpu")
    to_q = dit.transformer.transformer_blocks[0].attn1.to_q
    assert isinstance(to_q, gg.ops.GGMLOps.Linear) and to_q.weight.tensor_type.name == q.upper()
    ours = pk("glmimage_core.dit.sampling").decode_prior(dataclasses.replace(bundle, dit=dit), prior, steps=8,
                                                        guidance=1.5, seed=3)
    assert ours.shape == picture.shape == (2, 128, 96, 3)
    mean, peak = (ours - picture).abs().mean().item(), (ours - picture).abs().max().item()
    assert mean <= DIT_PIXEL_LIMITS[q][0] and peak <= DIT_PIXEL_LIMITS[q][1], (q, mean, peak)
    assert mean > 0  # the quantized weights were used, not the folder's


@pytest.mark.comfyui_inprocess
def test_without_comfyui_gguf_the_loader_says_how_to_install_it(files, tmp_path):
    """A ComfyUI with the pack but without ComfyUI-GGUF (a process of its own: nothing imported it there)."""
    comfyui_dir = Path(os.environ.get("GLMIMAGE_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
    script = f"""
import importlib.util, sys
sys.path[:0] = [{str(comfyui_dir)!r}, {str(REPO)!r}]
from comfy.cli_args import args; args.cpu = True
spec = importlib.util.spec_from_file_location("pack", {str(REPO / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO)!r}])
pack = importlib.util.module_from_spec(spec); sys.modules["pack"] = pack; spec.loader.exec_module(pack)
importlib.import_module("pack.glmimage_comfy.gguf_ops").install()
from pack.glmimage_core.dit.loading import load_dit
try:
    load_dit({str(files[("dit", "q8_0")])!r}, dtype="bf16", device="cpu")
except Exception as err:
    print("ERROR:", err)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "ERROR: GGUF files load through the custom node pack ComfyUI-GGUF, which is not installed" in out.stdout, \
        out.stdout + out.stderr
    assert '"ComfyUI-GGUF" by city96 with ComfyUI-Manager' in out.stdout
    assert "git clone https://github.com/city96/ComfyUI-GGUF" in out.stdout and "pip install gguf" in out.stdout


def test_gguf_dit_as_a_native_model_samples_with_comfyuis_ksampler_within_tolerance_of_bf16(pk, files,
                                                                                         dit_reference):
    """The DiT MODEL of a GGUF file through ComfyUI's sampler (BaseModel's manual cast to the compute dtype: the
    stored bytes are not a dtype to compute in) against the bf16 folder's MODEL through the same sampler:
    measured mean 0.003, max 0.06 for Q8_0, on ComfyUI 0.3.75 and 0.33.0 alike. (The sampler path is compared
    with the bf16 sampler path, not with the core loop: on ComfyUI 0.33.0 the two differ in bf16 already.)"""
    bundle, prior, _ = dit_reference
    dit = pk("glmimage_core.dit.loading").load_dit(str(files[("dit", "q8_0")]), dtype="bf16", device="cpu")
    sampling = pk("glmimage_comfy.decoder_sampling")
    ours = sampling.decode_with_comfy(dataclasses.replace(bundle, dit=dit), prior, None, 8, 1.5, 3)
    reference = sampling.decode_with_comfy(bundle, prior, None, 8, 1.5, 3)
    assert ours.shape == reference.shape
    diff = (ours - reference).abs()
    assert 0 < diff.mean() <= DIT_PIXEL_LIMITS["q8_0"][0] and diff.max() <= DIT_PIXEL_LIMITS["q8_0"][1], \
        (diff.mean(), diff.max())


def test_a_streamed_gguf_dit_paints_the_pixels_of_a_full_load(pk, files, dit_reference):
    """ComfyUI's lowvram streaming (a VRAM limit below the model's size) of a GGUF DiT: the quantized layers
    stream as they are (ComfyUI-GGUF dequantises them per forward) and the picture is the same."""
    bundle, prior, _ = dit_reference
    dit = pk("glmimage_core.dit.loading").load_dit(str(files[("dit", "q4_0")]), dtype="bf16", device="cpu")
    gguf_bundle = dataclasses.replace(bundle, dit=dit)
    sampling = pk("glmimage_comfy.decoder_sampling")
    full = sampling.decode_with_comfy(gguf_bundle, prior, None, 4, 1.5, 3)
    model = pk("glmimage_comfy.native_patcher").native_model(dit, lambda: None)
    budget = model.model_size() // 5
    streamed = sampling.decode_with_comfy(gguf_bundle, prior, None, 4, 1.5, 3, max_resident=budget)
    assert model.loaded_size() <= budget < model.model_size()
    gg = pk("glmimage_comfy.gguf_ops").comfyui_gguf()
    assert sum(isinstance(m, gg.ops.GGMLOps.Linear) for m in dit.transformer.modules()) > 5
    assert torch.equal(streamed, full)


def test_tensors_kept_in_bf16_arrive_as_their_exact_values(pk, tmp_path):
    """A bf16 checkpoint's embeddings and kept layers are stored as GGUF BF16 (the bits as they are) and come out
    of ComfyUI-GGUF's loader as the same bf16 values, in memory of their own."""
    from glmimage_core.weights import gguf_files

    values = torch.randn(64, 40, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    plan = gguf_files.TensorPlan("prior_token_embedding.weight", (64, 40), gguf.GGMLQuantizationType.BF16, (64, 40))
    writer = gguf.GGUFWriter(tmp_path / "bf16.gguf", arch=gguf_files.ARCHITECTURES["dit"])
    writer.add_tensor(plan.name, gguf_files.encode(values, plan), raw_dtype=gguf.GGMLQuantizationType.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ops = pk("glmimage_comfy.gguf_ops")
    stored = ops.read_state_dict(tmp_path / "bf16.gguf", "dit")[plan.name]
    for dtype in (torch.bfloat16, torch.float32):
        out = ops.plain(stored, dtype)
        assert out.dtype == dtype and type(out) is torch.Tensor and torch.equal(out, values.to(dtype))
    assert ops.plain(stored, torch.bfloat16).untyped_storage().data_ptr() != stored.untyped_storage().data_ptr()
    assert torch.equal(gguf_files.dequantized(tmp_path / "bf16.gguf")[plan.name], values.float())


def test_rows_that_are_not_whole_blocks_are_stored_in_comfyui_ggufs_orig_shape_convention(pk, tmp_path):
    """A (64, 16) weight (the tiny DiT's width: 16 is not a multiple of the 32-wide blocks) is quantized as rows of
    one block with its torch shape in `comfy.gguf.orig_shape.<name>`; ComfyUI-GGUF reads it back in that shape,
    its values the gguf package's own."""
    from glmimage_core.weights import gguf_files

    weight = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    plans = gguf_files.write_gguf(tmp_path / "narrow.gguf", "dit", {"proj.weight": ((64, 16), torch.float32)},
                                  {"proj.weight": weight}.__getitem__, "Q4_0", {"proj.weight"})
    assert plans[0].reshaped and plans[0].stored_shape == (32, 32)
    reference = gguf_files.dequantized(tmp_path / "narrow.gguf")["proj.weight"]
    q = gguf.GGMLQuantizationType.Q4_0
    expected = gguf.quants.dequantize(gguf.quants.quantize(weight.numpy().reshape(32, 32), q), q).reshape(64, 16)
    assert torch.equal(reference, torch.from_numpy(np.array(expected)))
    ops = pk("glmimage_comfy.gguf_ops")
    stored = ops.read_state_dict(tmp_path / "narrow.gguf", "dit")["proj.weight"]
    assert tuple(stored.shape) == (64, 16)
    ours = ops.comfyui_gguf().dequant.dequantize_tensor(stored, torch.float32, torch.float32)
    assert torch.equal(ours.as_subclass(torch.Tensor), reference)
