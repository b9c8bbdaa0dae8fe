"""'Load GLM-Image AR LoRA' in a real ComfyUI server: one graph with a branch with the LoRA and one without,
tokens saved by 'Save GLM-Image tokens' and compared with transformers + PEFT (peft's merge_and_unload)."""

import numpy as np
import pytest
import torch
from PIL import Image

from glmimage_core.tokens.files import load_prior
from tests.integration.conftest import TINY_AR_NAME

PROMPT = "make the fox red <sop>4 5<eop>"  # image to image: 20 tokens, not square
LORA_FOLDER = "glm_ar_test_lora"  # in models/loras: a PEFT adapter folder as peft's save_pretrained writes it


@pytest.fixture(scope="module")
def lora_dir(comfy_server):
    from glmimage_core.demo.models import random_ar_lora

    return random_ar_lora(comfy_server.model_path(TINY_AR_NAME),
                          comfy_server.base / "models" / "loras" / LORA_FOLDER, seed=7)


def branch(prompt: dict, name: str, ar: str, seed: int) -> None:
    """generate (greedy) -> extract -> save tokens as output/glm_image/<name>_*.safetensors."""
    prompt[f"{name}_gen"] = {"class_type": "GLMImageGenerateTokens", "inputs": {
        "ar_model": [ar, 0], "inputs": ["prompt", 0], "seed": seed, "images": 1, "do_sample": False,
        "temperature": 0.0, "top_p": 0.0, "top_k": 0, "speed": "standard", "offload_after": True}}
    prompt[f"{name}_extract"] = {"class_type": "GLMImageExtractTokens", "inputs": {"tokens": [f"{name}_gen", 0]}}
    prompt[f"{name}_save"] = {"class_type": "GLMImageSaveTokens", "inputs": {
        "prior": [f"{name}_extract", 0], "filename_prefix": f"glm_image/{name}"}}


def graph(seed: int, lora_strength: float | None = None) -> dict:
    prompt = {
        "load": {"class_type": "GLMImageARLoader", "inputs": {
            "model": TINY_AR_NAME, "dtype": "fp32", "device": "cpu", "attention": "sdpa", "quantization": "none",
            "weight_dtype": "default"}},
        "image": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "prompt": {"class_type": "GLMImagePrompt", "inputs": {"ar_model": ["load", 0], "prompt": PROMPT,
                                                               "image": ["image", 0]}},
    }
    branch(prompt, f"base{seed}", "load", seed)
    if lora_strength is not None:
        prompt["lora"] = {"class_type": "GLMImageARLoraLoader", "inputs": {
            "ar_model": ["load", 0], "lora_name": f"{LORA_FOLDER}/adapter_model.safetensors",
            "strength": lora_strength}}
        branch(prompt, f"lora{seed}", "lora", seed)
    return prompt


def saved_grid(server, name: str) -> torch.Tensor:
    (path,) = sorted((server.output_dir / "glm_image").glob(f"{name}_*.safetensors"))
    return load_prior(path).grids[0]


def peft_reference(server, lora_dir, strength: float) -> torch.Tensor:
    """The 4 x 5 grid transformers' greedy generate samples with the adapter merged by peft."""
    from transformers import AutoProcessor

    from glmimage_core.ar.chat_prompt import prepare_inputs
    from glmimage_core.demo.models import peft_merged_ar_model

    model_dir = server.model_path(TINY_AR_NAME)
    with Image.open(server.input_dir / "example.png") as picture:
        source = torch.from_numpy(np.asarray(picture.convert("RGB")).astype(np.float32) / 255.0)
    inputs = prepare_inputs(AutoProcessor.from_pretrained(model_dir), PROMPT, images=[source])
    model = peft_merged_ar_model(model_dir, [(lora_dir, strength)])
    with torch.no_grad():
        out = model.generate(**inputs.model_inputs, do_sample=False,
                             max_new_tokens=inputs.shape.max_new_tokens(inputs.mode))
    return out[0, inputs.input_length:inputs.input_length + 20].reshape(4, 5)


def test_a_graph_with_and_without_the_ar_lora_matches_peft_and_keeps_the_base(comfy_server, lora_dir):
    comfy_server.run(graph(seed=0))
    plain = saved_grid(comfy_server, "base0")
    comfy_server.run(graph(seed=1, lora_strength=0.5))  # both branches in one run
    with_lora = saved_grid(comfy_server, "lora1")
    assert torch.equal(saved_grid(comfy_server, "base1"), plain)
    assert torch.equal(with_lora, peft_reference(comfy_server, lora_dir, 0.5))
    assert not torch.equal(with_lora, plain)
    comfy_server.run(graph(seed=2))  # after the LoRA'd run: the cached base model is as loaded
    assert torch.equal(saved_grid(comfy_server, "base2"), plain)
    assert "lora key not loaded" not in comfy_server.log_tail(200_000)


def test_a_dit_lora_on_the_ar_model_is_refused_with_the_file_named(comfy_server, lora_dir):
    from tests.integration.conftest import PEFT_LORA_NAME

    prompt = graph(seed=3, lora_strength=1.0)
    prompt["lora"]["inputs"]["lora_name"] = PEFT_LORA_NAME  # the tiny DiT's LoRA the fixture wrote
    with pytest.raises(Exception, match=rf"lora_name '{PEFT_LORA_NAME}': .* is not a PEFT LoRA of the GLM-Image "
                                        r"AR model: it targets GLM-Image's DiT"):
        comfy_server.run(prompt)
