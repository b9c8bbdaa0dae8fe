"""GLM-Image's DiT as a native MODEL in a real ComfyUI server: stock samplers, LoRA loader, tiled VAE decode,
a VRAM limit (ComfyUI's partial load), bad input reported with the input named."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import node_id, workflow_to_api_prompt
from tests.integration.conftest import FULL_MODEL_NAME, PEFT_LORA_NAME

KSAMPLER_WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_ksampler.json"


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture
def prompt(object_info):
    return workflow_to_api_prompt(json.loads(KSAMPLER_WORKFLOW.read_text()), object_info)


def final_pixels(server, entry) -> np.ndarray:
    """The decoded picture of a KSampler workflow run (not the token preview)."""
    paths = [p for p in server.output_images(entry) if "tokens_preview" not in p.name]
    assert len(paths) == 1, paths
    with Image.open(paths[0]) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.int16)


def test_ksampler_workflow_runs_with_other_samplers(comfy_server, prompt):
    """(The saved workflow itself, euler at 1024x1024, runs in test_comfyui_server.py.)"""
    prompt = _small(prompt)
    sampler = node_id(prompt, "KSampler")
    baseline = final_pixels(comfy_server, comfy_server.run(prompt))
    assert baseline.shape == (128, 96, 3)
    for name in ("dpmpp_2m", "uni_pc"):
        prompt[sampler]["inputs"].update(sampler_name=name)
        pixels = final_pixels(comfy_server, comfy_server.run(prompt))
        assert pixels.shape == baseline.shape and np.abs(pixels - baseline).max() > 0


def _small(prompt: dict) -> dict:
    """The KSampler workflow at 128x96 px and 4 steps: enough to compare pixels, quick on a CPU."""
    shape = node_id(prompt, "GLMImageShape")
    prompt[shape]["inputs"].update(size_from="pixels", width=96, height=128)
    prompt[node_id(prompt, "KSampler")]["inputs"]["steps"] = 4
    return prompt


def test_lora_loader_model_only_applies_a_glm_image_dit_lora(comfy_server, prompt):
    from safetensors.torch import save_file

    from glmimage_core.demo.decoder import random_lora

    prompt = _small(prompt)
    plain = final_pixels(comfy_server, comfy_server.run(prompt))
    transformer = comfy_server.model_path(FULL_MODEL_NAME) / "transformer"
    lora = {f"transformer.{key}": value for key, value in random_lora(transformer).items()}
    loras = comfy_server.base / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(loras / "glm_image_test_lora.safetensors"))
    dit = node_id(prompt, "GLMImageDiTLoader")
    cond = node_id(prompt, "GLMImageConditioning")
    prompt["900"] = {"class_type": "LoraLoaderModelOnly",
                     "inputs": {"model": [dit, 0], "lora_name": "glm_image_test_lora.safetensors",
                                "strength_model": 1.0}}
    prompt[cond]["inputs"]["model"] = ["900", 0]
    with_lora = final_pixels(comfy_server, comfy_server.run(prompt))
    assert np.abs(with_lora - plain).max() > 8  # the LoRA reached the DiT
    assert "lora key not loaded" not in comfy_server.log_tail(200_000)


def test_pack_lora_loader_applies_the_lora_alpha_of_a_diffusers_lora_files_metadata(comfy_server, prompt):
    """A diffusers LoRA with lora_alpha = 2 x r (in its metadata only): 'Load GLM-Image LoRA' at strength 1
    gives diffusers' scale, which the stock LoraLoaderModelOnly gives at strength 2 (README), not at 1."""
    prompt = _small(prompt)
    dit, cond = node_id(prompt, "GLMImageDiTLoader"), node_id(prompt, "GLMImageConditioning")

    def render(loader: str, strength: float) -> np.ndarray:
        graph = json.loads(json.dumps(prompt))
        graph["910"] = {"class_type": loader, "inputs": {"model": [dit, 0], "lora_name": PEFT_LORA_NAME,
                                                         "strength_model": strength}}
        graph[cond]["inputs"]["model"] = ["910", 0]
        return final_pixels(comfy_server, comfy_server.run(graph))

    ours = render("GLMImageLoraLoader", 1.0)
    assert np.array_equal(ours, render("LoraLoaderModelOnly", 2.0))
    assert np.abs(ours - render("LoraLoaderModelOnly", 1.0)).max() > 2
    assert "lora key not loaded" not in comfy_server.log_tail(200_000)


def test_vae_decode_tiled_and_a_tiny_vram_limit(comfy_server, prompt):
    prompt = _small(prompt)
    plain = final_pixels(comfy_server, comfy_server.run(prompt))
    # ComfyUI's partial load: at most 1 MB of the DiT resident, the rest streamed each step: the same pixels.
    dit = node_id(prompt, "GLMImageDiTLoader")
    prompt[dit]["inputs"]["vram_limit_gb"] = 0.001
    assert np.array_equal(final_pixels(comfy_server, comfy_server.run(prompt)), plain)
    prompt[dit]["inputs"]["vram_limit_gb"] = 0.0
    decode = node_id(prompt, "VAEDecode")
    prompt[decode] = {"class_type": "VAEDecodeTiled",
                      "inputs": {**prompt[decode]["inputs"], "tile_size": 512, "overlap": 64, "temporal_size": 64,
                                 "temporal_overlap": 8}}
    tiled = final_pixels(comfy_server, comfy_server.run(prompt))
    assert tiled.shape == plain.shape
    assert np.abs(tiled - plain).max() <= 1  # a 96x128 picture is one tile: the untiled pixels (rounding aside)


def test_a_latent_of_the_wrong_size_is_reported_with_the_input_named(comfy_server, prompt):
    prompt = _small(prompt)
    prompt["901"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}}
    prompt[node_id(prompt, "KSampler")]["inputs"]["latent_image"] = ["901", 0]
    with pytest.raises(Exception, match=r"latent: the sampler's latent is 256x256 px but the GLM-Image tokens"):
        comfy_server.run(prompt)
    assert comfy_server.get("/system_stats")["system"]["comfyui_version"]  # still serving


def test_latent_previews_arrive_while_ksampler_and_the_decode_node_run(comfy_server, prompt, object_info):
    """The server runs with --preview-method latent2rgb (tests/integration/conftest.py): KSampler's previews use
    the factors fitted from the GLM-Image VAE; the decode node gets them through the same ComfyUI callback."""
    import asyncio
    import io

    from tests.integration.test_live_preview import _run_and_listen

    prompt = _small(prompt)
    sampler = node_id(prompt, "KSampler")
    prompt[sampler]["inputs"]["steps"] = 12
    t2i = workflow_to_api_prompt(json.loads((KSAMPLER_WORKFLOW.parent / "glm_image_text_to_image.json")
                                            .read_text()), object_info)
    decode = node_id(t2i, "GLMImageDecode")
    t2i[node_id(t2i, "GLMImageShape")]["inputs"].update(size_from="pixels", width=96, height=128)
    t2i[decode]["inputs"]["steps"] = 12
    for graph, node in ((prompt, sampler), (t2i, decode)):
        _, events = asyncio.run(_run_and_listen(comfy_server.url, graph))
        previews = [e for e in events if e["kind"] == "preview" and e["data"]["node_id"] == node]
        assert len(previews) >= 3, sorted({e["kind"] for e in events})
        with Image.open(io.BytesIO(previews[-1]["image"])) as picture:
            # 96x128 px; ComfyUI's server scales each preview to fit --preview-size (512 by default,
            # ImageOps.contain: a latent-sized 12x16 preview arrives as 384x512, on 0.3.75 and 0.33)
            assert picture.size == (384, 512), picture.size


def test_an_unknown_weight_dtype_is_refused_with_the_input_named(comfy_server, prompt):
    """A hand-edited or old workflow with a weight_dtype the loaders do not offer. ComfyUI 0.33's validation
    refuses it when queued (for the whole prompt, or in `node_errors` while other outputs still run); 0.3.75
    does not check V3 combo values, so there the loader's own check stops the run with the same input named.
    Either way the server keeps serving."""
    from tests.comfy_harness import ComfyError

    for loader in ("GLMImageDiTLoader", "GLMImageARLoader"):
        bad = json.loads(json.dumps(prompt))
        bad[node_id(bad, loader)]["inputs"]["weight_dtype"] = "fp16_fast"
        try:
            queued = comfy_server.post("/prompt", {"prompt": bad})
            answer = json.dumps(queued["node_errors"])
            comfy_server.wait_for(queued["prompt_id"])
        except ComfyError as refused:
            answer = str(refused)
        assert "weight_dtype" in answer and "fp16_fast" in answer, (loader, answer)
    assert comfy_server.get("/system_stats")["system"]["comfyui_version"]  # still serving
