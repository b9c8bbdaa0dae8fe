import json
import shutil

import pytest

from glmimage_core.ar import loading as ar_loading
from glmimage_core.errors import GlmImageInputError


def test_hub_layout_and_plain_folder_both_load(tiny_hub_dir, tiny_ar_dir):
    hub = ar_loading.load_ar_model(str(tiny_hub_dir), dtype="fp32", device="cpu")
    plain = ar_loading.load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")
    assert hub.codebook_size == plain.codebook_size == 64
    assert hub.processor.image_token == "<|image|>"


def test_cache_returns_the_same_model_and_keeps_one_copy_per_folder(tiny_hub_dir):
    first = ar_loading.load_ar_model(str(tiny_hub_dir), dtype="fp32", device="cpu")
    assert ar_loading.load_ar_model(str(tiny_hub_dir), dtype="fp32", device="cpu") is first
    other = ar_loading.load_ar_model(str(tiny_hub_dir), dtype="bf16", device="cpu")
    assert other is not first and str(other.model.dtype) == "torch.bfloat16"
    same_path = [m for m in ar_loading.cached_models() if m.path == first.path]
    assert same_path == [other]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(GlmImageInputError, match="does not exist"):
        ar_loading.load_ar_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(GlmImageInputError, match="empty or not a GLM-Image model"):
        ar_loading.load_ar_model(str(tmp_path / "empty"))


def test_other_model_type_is_named(tmp_path, tiny_ar_dir):
    folder = tmp_path / "llama"
    shutil.copytree(tiny_ar_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GlmImageInputError, match="holds a 'llama' model, not GLM-Image"):
        ar_loading.load_ar_model(str(folder))


def test_corrupted_safetensors_is_reported(tmp_path, tiny_ar_dir):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_ar_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(GlmImageInputError, match="corrupted or incomplete"):
        ar_loading.load_ar_model(str(folder), dtype="fp32", device="cpu")


def test_no_safetensors_weights(tmp_path, tiny_ar_dir):
    folder = tmp_path / "binonly"
    shutil.copytree(tiny_ar_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(GlmImageInputError, match="no .safetensors weights"):
        ar_loading.load_ar_model(str(folder))


def test_hub_layout_without_processor(tmp_path, tiny_hub_dir):
    folder = tmp_path / "noproc"
    shutil.copytree(tiny_hub_dir, folder)
    shutil.rmtree(folder / "processor")
    with pytest.raises(GlmImageInputError, match="no processor/"):
        ar_loading.load_ar_model(str(folder))


def test_hub_id_while_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(GlmImageInputError, match="hub is offline"):
        ar_loading.load_ar_model("zai-org/GLM-Image")


def test_quantization_without_bitsandbytes_or_gpu_is_a_clear_message(tiny_ar_dir):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        expected = "quantization=int8 needs the optional package bitsandbytes"
    else:
        expected = "quantization=int8 runs on CUDA GPUs only"
    with pytest.raises(GlmImageInputError, match=expected):
        ar_loading.load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu", quantization="int8")
    with pytest.raises(GlmImageInputError, match="quantization 'fp4' is not one of"):
        ar_loading.load_ar_model(str(tiny_ar_dir), device="cpu", quantization="fp4")


def test_an_unknown_device_is_named_not_taken_for_auto(tiny_ar_dir):
    """ComfyUI 0.3.75 passes any value of a V3 combo through: 'cuda:1' must not quietly mean 'auto'."""
    with pytest.raises(GlmImageInputError, match=r"device 'cuda:1' is not one of \['auto', 'gpu', 'cpu'\]"):
        ar_loading.load_ar_model(str(tiny_ar_dir), device="cuda:1")
