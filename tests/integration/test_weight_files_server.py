"""Single weight files in a real ComfyUI server: the loaders list them from ComfyUI's folders, 'Save GLM-Image
checkpoint' writes them there (never over an existing file unless asked), and a file of another model stops
at the loader with its name and what it looks like."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.comfy_harness import ComfyError
from tests.integration.conftest import FULL_MODEL_NAME


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def choices(object_info, node: str) -> list[str]:
    spec = object_info[node]["input"]["required"]["model"]
    return spec[0] if isinstance(spec[0], list) else spec[1]["options"]


def test_loaders_list_each_parts_files_beside_the_folders(object_info):
    folders = [FULL_MODEL_NAME, "tiny-glm-image"]
    assert choices(object_info, "GLMImageDecoderLoader") == folders
    assert choices(object_info, "GLMImageDiTLoader") == [*folders, "glm_image_dit_fp8_e4m3fn_comfy.safetensors"]
    assert choices(object_info, "GLMImageVAELoader") == [*folders, "glm_image_vae_bf16.safetensors"]
    text_encoders = ["glm_image_ar_fp8_e4m3fn_comfy.safetensors", "glm_image_glyph_bf16.safetensors"]
    assert choices(object_info, "GLMImageGlyphEncoderLoader") == [*folders, *text_encoders]
    assert choices(object_info, "GLMImageARLoader") == [*folders, *text_encoders]


def save_prompt(part: str, fmt: str, overwrite: bool = False) -> dict:
    return {"1": {"class_type": "GLMImageSaveCheckpoint",
                  "inputs": {"model": FULL_MODEL_NAME, "part": part, "format": fmt, "convention": "scaled_fp8",
                             "overwrite": overwrite}}}


def test_save_checkpoint_writes_into_comfyuis_folders_and_never_over_a_file(comfy_server):
    models = comfy_server.base / "models"
    comfy_server.run(save_prompt("dit", "fp8_e4m3fn"))
    written = models / "diffusion_models" / "glm_image_dit_fp8_e4m3fn_scaled.safetensors"
    assert written.is_file() and not list((models / "diffusion_models").glob(".*partial"))
    before = (models / "vae" / "glm_image_vae_bf16.safetensors").stat().st_mtime_ns
    with pytest.raises(ComfyError, match="exists already"):
        comfy_server.run(save_prompt("vae", "bf16"))
    assert (models / "vae" / "glm_image_vae_bf16.safetensors").stat().st_mtime_ns == before
    comfy_server.run(save_prompt("vae", "bf16", overwrite=True))
    assert (models / "vae" / "glm_image_vae_bf16.safetensors").stat().st_mtime_ns > before
    dit = {"1": {"class_type": "GLMImageDiTLoader",
                 "inputs": {"model": written.name, "weight_dtype": "default", "vram_limit_gb": 0.0, "dtype": "auto",
                            "device": "auto"}},
           "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}
    comfy_server.run(dit)


def test_a_flux_file_in_diffusion_models_is_refused_by_name(comfy_server):
    flux = comfy_server.base / "models" / "diffusion_models" / "flux1-schnell.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2),
               "single_blocks.0.linear1.weight": torch.zeros(2, 2)}, str(flux))
    prompt = {"1": {"class_type": "GLMImageDiTLoader",
                    "inputs": {"model": flux.name, "weight_dtype": "default", "vram_limit_gb": 0.0, "dtype": "auto",
                               "device": "auto"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}}}
    with pytest.raises(ComfyError) as err:
        comfy_server.run(prompt)
    assert "flux1-schnell.safetensors" in str(err.value) and "a Flux DiT" in str(err.value)
