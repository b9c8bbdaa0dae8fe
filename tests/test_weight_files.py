"""Single weight files (issue 19): what a path holds, foreign files refused, converting, and what a cancel or a
failed write leaves behind. No ComfyUI here (test_weight_files_comfy.py loads the files in its cast layers)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glmimage_core.errors import GlmImageInputError
from glmimage_core.weights import convert, formats, writer
from glmimage_core.weights.fp8 import FP8_DTYPES, quantize
from glmimage_core.weights.tensor_reader import SafetensorsReader


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout

    return build_tiny_full_hub_layout(tmp_path_factory.mktemp("wf") / "GLM-Image")


@pytest.fixture(scope="module")
def files(hub, tmp_path_factory) -> dict:
    """Every part in every format the pack writes, in ComfyUI's folders."""
    out = tmp_path_factory.mktemp("models")
    made = {}
    for fmt, convention in (("bf16", None), ("fp8_e4m3fn", "comfy_quant"), ("fp8_e4m3fn", "scaled_fp8"),
                            ("fp8_e5m2", "comfy_quant")):
        dirs = {part: out / convert.COMFY_FOLDERS[part] for part in formats.PARTS}
        for part, path in zip(formats.PARTS, convert.convert(hub, list(formats.PARTS), dirs, fmt, convention)):
            made[(part, fmt, convention if part in ("ar", "dit") else None)] = path
    return made


def test_each_path_is_told_apart_from_headers_and_metadata(hub, files):
    assert formats.inspect(hub).container == "hub"
    for part, folder in formats.HUB_FOLDERS.items():
        source = formats.inspect(hub / folder)
        assert (source.container, source.part) == ("folder", part)
    for (part, fmt, convention), path in files.items():
        source = formats.inspect(path, want=part)
        assert (source.container, source.part) == ("safetensors", part)
        assert source.storage == (fmt if part in ("ar", "dit") else "bf16")
        assert source.convention == convention
        assert source.config == json.loads((hub / formats.HUB_FOLDERS[part] / "config.json").read_text())
    ar = formats.inspect(files[("ar", "bf16", None)])
    assert ar.files["processor/chat_template.jinja"] == (hub / "processor" / "chat_template.jinja").read_text()
    assert "processor/tokenizer.json" in ar.files and "generation_config.json" in ar.files
    dit = formats.inspect(files[("dit", "bf16", None)])
    assert set(dit.files) == {"scheduler/scheduler_config.json", "vae/config.json"}
    assert ComfyNames.DIT == convert.COMFY_FOLDERS["dit"] and files[("dit", "bf16", None)].parent.name == ComfyNames.DIT


class ComfyNames:
    DIT = "diffusion_models"


def _foreign(tmp_path: Path, name: str, tensors: dict, metadata=None) -> Path:
    path = tmp_path / name
    save_file({k: v.clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


Z = torch.zeros(2, 2)


@pytest.mark.parametrize("name, tensors, expected", [
    ("flux1-dev.safetensors", {"double_blocks.0.img_attn.qkv.weight": Z, "single_blocks.0.linear1.weight": Z},
     "a Flux DiT"),
    ("sdxl_vae.safetensors", {"encoder.conv_in.weight": Z, "encoder.conv_out.weight": torch.zeros(8, 2, 3, 3),
                              "decoder.conv_in.weight": Z, "quant_conv.weight": Z}, "an SD / SDXL VAE"),
    ("qwen_2.5_vl_7b.safetensors", {"model.layers.0.self_attn.q_proj.weight": Z, "visual.blocks.0.mlp.weight": Z},
     "a Qwen2.5-VL text encoder"),
    ("qwen3_4b.safetensors", {"model.layers.0.self_attn.q_proj.weight": Z, "model.embed_tokens.weight": Z},
     "an LLM text encoder"),
    ("glm_lora.safetensors", {"transformer_blocks.0.attn1.to_q.lora_A.weight": Z}, "a LoRA"),
])
def test_foreign_files_stop_at_the_loader_naming_the_file_and_what_it_looks_like(tmp_path, name, tensors, expected):
    from glmimage_core.dit.loading import load_dit

    path = _foreign(tmp_path, name, tensors)
    with pytest.raises(GlmImageInputError) as err:
        load_dit(str(path), dtype="fp32", device="cpu")
    assert name in str(err.value) and "GLM-Image's DiT" in str(err.value) and expected in str(err.value)


def test_truncated_downloads_pickles_and_other_parts_are_refused(tmp_path, files):
    from glmimage_core.ar.loading import load_ar_model
    from glmimage_core.dit.loading import load_vae

    whole = files[("dit", "bf16", None)].read_bytes()
    cut = tmp_path / "glm_image_dit_bf16.safetensors"
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(GlmImageInputError, match="truncated download"):
        formats.inspect(cut, want="dit")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(GlmImageInputError, match="pickle checkpoint"):
        formats.inspect(pickle, want="dit")
    with pytest.raises(GlmImageInputError, match="is not GLM-Image's VAE: it looks like GLM-Image's DiT"):
        load_vae(str(files[("dit", "bf16", None)]), dtype="fp32", device="cpu")
    with pytest.raises(GlmImageInputError, match="is not GLM-Image's AR model: it looks like GLM-Image's glyph"):
        load_ar_model(str(files[("glyph", "bf16", None)]), dtype="fp32", device="cpu")


def test_the_range_reader_reads_what_safetensors_reads(files):
    for path in (files[("ar", "fp8_e4m3fn", "comfy_quant")], files[("dit", "fp8_e4m3fn", "scaled_fp8")]):
        with SafetensorsReader([path]) as reader, safe_open(str(path), "pt") as reference:
            assert sorted(reader.keys()) == sorted(reference.keys())
            for key in reference.keys():
                ours, theirs = reader.read(key), reference.get_tensor(key)
                assert ours.dtype == theirs.dtype and torch.equal(ours.reshape(-1).view(torch.uint8), theirs.reshape(-1).view(torch.uint8))


@pytest.mark.parametrize("fmt, convention", [("fp8_e4m3fn", "comfy_quant"), ("fp8_e4m3fn", "scaled_fp8"),
                                             ("fp8_e5m2", "comfy_quant")])
def test_fp8_files_hold_exactly_the_rounded_weights_in_comfyuis_convention(hub, files, fmt, convention):
    path = files[("dit", fmt, convention)]
    scale_name = "weight_scale" if convention == "comfy_quant" else "scale_weight"
    with safe_open(str(path), "pt") as f, safe_open(str(next((hub / "transformer").glob("*.safetensors"))),
                                                      "pt") as src:
        keys = set(f.keys())
        layers = [k[: -len(".weight")] for k in keys if k.endswith(".weight") and f"{k[:-7]}.{scale_name}" in keys]
        assert len(layers) > 10
        for layer in layers:
            original = src.get_tensor(f"{layer}.weight")  # as stored (the hub: bf16; the tiny model: fp32)
            q, scale = quantize(original, FP8_DTYPES[fmt])
            stored = f.get_tensor(f"{layer}.weight")
            assert stored.dtype == FP8_DTYPES[fmt] and torch.equal(stored.view(torch.uint8), q.view(torch.uint8))
            assert float(f.get_tensor(f"{layer}.{scale_name}")) == float(scale)
            back = stored.float() * float(scale)
            # e4m3: 3 mantissa bits (relative step 1/8), e5m2: 2; values below the subnormal range round to 0
            step = 2 ** -3 if fmt == "fp8_e4m3fn" else 2 ** -2
            assert ((back - original.float()).abs() <= step * original.float().abs() + 2 * float(scale)).all()
            if convention == "comfy_quant":
                assert json.loads(bytes(f.get_tensor(f"{layer}.comfy_quant").tolist())) == {
                    "format": {"fp8_e4m3fn": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}[fmt]}
        if convention == "scaled_fp8":
            assert f.get_tensor("scaled_fp8").dtype == FP8_DTYPES[fmt] and f.get_tensor("scaled_fp8").numel() == 0
        kept = [k for k in keys if k.startswith("norm_out") and k.endswith(".weight")]  # DIT_FP8_KEEP layers
        assert kept and all(f.get_tensor(k).dtype == torch.bfloat16 for k in kept)


def test_convert_never_overwrites_unless_asked(hub, tmp_path):
    first = convert.convert_part(hub, "vae", tmp_path)
    stamp = first.stat().st_mtime_ns
    with pytest.raises(GlmImageInputError, match="exists already"):
        convert.convert_part(hub, "vae", tmp_path)
    assert first.stat().st_mtime_ns == stamp
    again = convert.convert_part(hub, "vae", tmp_path, overwrite=True)
    assert again == first and formats.inspect(again).part == "vae"
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]


class Cancelled(Exception):
    pass


def test_a_cancel_leaves_no_file_under_the_final_name_nor_a_temporary_one(hub, tmp_path):
    calls = []

    def cancel_after_three():
        calls.append(1)
        if len(calls) > 3:
            raise Cancelled("the user pressed cancel")

    with pytest.raises(Cancelled):
        convert.convert_part(hub, "dit", tmp_path, "fp8_e4m3fn", check_cancel=cancel_after_three)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_full_disk_leaves_no_file(hub, tmp_path, monkeypatch):
    real, written = writer._write_tensor, []

    def disk_full_at_the_fifth(handle, tensor):
        if len(written) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        real(handle, tensor)

    monkeypatch.setattr(writer, "_write_tensor", disk_full_at_the_fifth)
    with pytest.raises(OSError, match="No space left"):
        convert.convert_part(hub, "ar", tmp_path, "bf16")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(writer, "_write_tensor", real)
    existing = tmp_path / "glm_image_ar_bf16.safetensors"
    existing.write_bytes(b"a user's file")
    monkeypatch.setattr(writer, "_write_tensor", disk_full_at_the_fifth)
    written.clear()
    with pytest.raises(OSError):
        convert.convert_part(hub, "ar", tmp_path, "bf16", overwrite=True)
    assert existing.read_bytes() == b"a user's file" and list(tmp_path.iterdir()) == [existing]


def test_the_cli_converts_all_parts_into_comfyuis_folders(hub, tmp_path, capsys):
    from glmimage_core.cli import main

    assert main(["convert", "--model", str(hub), "--models-dir", str(tmp_path), "--format", "fp8_e4m3fn",
                 "--convention", "scaled_fp8"]) == 0
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.safetensors"))
    assert written == ["diffusion_models/glm_image_dit_fp8_e4m3fn_scaled.safetensors",
                       "text_encoders/glm_image_ar_fp8_e4m3fn_scaled.safetensors",
                       "text_encoders/glm_image_glyph_bf16.safetensors", "vae/glm_image_vae_bf16.safetensors"]
    out = capsys.readouterr().out
    assert "100%" in out and "wrote" in out
    assert main(["convert", "--model", str(hub), "--models-dir", str(tmp_path), "--part", "dit",
                 "--format", "fp8_e4m3fn", "--convention", "scaled_fp8"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_bf16_files_load_outside_comfyui_as_the_folder_does(hub, files):
    from glmimage_core.dit.loading import load_dit, load_glyph_encoder, load_vae

    for load, part in ((load_dit, "dit"), (load_vae, "vae"), (load_glyph_encoder, "glyph")):
        folder, file = load(str(hub), dtype="bf16", device="cpu"), load(str(files[(part, "bf16", None)]),
                                                                        dtype="bf16", device="cpu")
        module = {"dit": "transformer", "vae": "vae", "glyph": "text_encoder"}[part]
        a, b = getattr(folder, module).state_dict(), getattr(file, module).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    from glmimage_core.memory.host import PlainHost, host, install_host

    before = install_host(PlainHost())  # outside ComfyUI (a comfy_pack test may have installed ComfyUI's host)
    try:
        with pytest.raises(GlmImageInputError, match="inside ComfyUI only"):
            load_dit(str(files[("dit", "fp8_e4m3fn", "comfy_quant")]), dtype="bf16", device="cpu")
    finally:
        install_host(before)
    assert host() is before
