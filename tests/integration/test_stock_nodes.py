"""ComfyUI's own nodes on a GLM-Image MODEL, in a real server: each works with an outcome that is checked
against the plain KSampler picture, or stops with a message naming the node/input and what to do.

All runs render the KSampler example workflow at 96x128 px, 4 steps (test_native_server._small); ComfyUI
caches the token stage across prompts with the same inputs, so mostly only the DiT part reruns. The
expected equalities follow from the nodes' own formulas (see each test): they fail when a node reaches the
DiT with the wrong timestep, the wrong schedule or the wrong weights.

Model sampling: GLM-Image's DiT is told the timestep it was trained on for the noise level (its own mu for
the picture size), so a flow model-sampling node only changes the schedule. At 96x128 px GLM's mu is
sqrt(48/256)*0.75 + 0.25 (6x8 DiT patches): ModelSamplingSD3 / AuraFlow with that shift, or ModelSamplingFlux
with exp(shift) = mu, give the plain picture, before or after 'GLM-Image conditioning'.
"""

import copy
import json
import math

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyError, node_id, workflow_to_api_prompt
from tests.integration.conftest import FULL_MODEL_NAME
from tests.integration.test_native_server import KSAMPLER_WORKFLOW, _small

MU = (48 / 256) ** 0.5 * 0.75 + 0.25  # GLM-Image's shift at 96x128 px
LORA_NAME = "glm_image_stock_nodes_lora.safetensors"


def flux_inputs_for(mu: float) -> dict:
    """ModelSamplingFlux inputs with exp(shift) = mu. Flux's shift = (w*h/256)*mm + b, mm = (max-base)/3840,
    b = base - 256*mm; at 16x16 px and base 0 that is -255*max/3840 < 0, as ln(mu) is for mu < 1."""
    return {"max_shift": -math.log(mu) * 3840 / 255, "base_shift": 0.0, "width": 16, "height": 16}


@pytest.fixture(scope="module")
def base(comfy_server):
    return _small(workflow_to_api_prompt(json.loads(KSAMPLER_WORKFLOW.read_text()), comfy_server.object_info()))


@pytest.fixture(scope="module")
def ids(base):
    return {name: node_id(base, name) for name in ("GLMImageDiTLoader", "GLMImageConditioning", "KSampler",
                                                   "VAEDecode", "GLMImageVAELoader")}


def pixels(server, prompt: dict, save: str | None = None) -> np.ndarray:
    """The picture the SaveImage node `save` (default: the workflow's final one) wrote in this run."""
    entry = server.run(prompt)
    if save is None:
        save = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage"
                    and "tokens_preview" not in v["inputs"]["filename_prefix"])
    (path,) = [server.output_dir / i.get("subfolder", "") / i["filename"] for i in entry["outputs"][save]["images"]]
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB")).astype(np.int16)


def refused(server, prompt: dict) -> str:
    """The execution error ('NodeType (node id): Exception: message') of a prompt that must fail."""
    with pytest.raises(ComfyError) as err:
        server.run(prompt)
    assert server.get("/system_stats")["system"]["comfyui_version"]  # still serving
    return str(err.value).split("\n")[0]


def diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a - b).max())


@pytest.fixture(scope="module")
def baseline(comfy_server, base):
    return pixels(comfy_server, copy.deepcopy(base))


def with_node(prompt: dict, new_id: str, class_type: str, inputs: dict) -> dict:
    prompt[new_id] = {"class_type": class_type, "inputs": inputs}
    return prompt


def model_node(base: dict, ids: dict, class_type: str, inputs: dict, place: str) -> dict:
    """`class_type` on the MODEL: between the DiT loader and the conditioning node, or after the conditioning
    node (before KSampler)."""
    prompt = copy.deepcopy(base)
    if place == "before":
        with_node(prompt, "800", class_type, {"model": [ids["GLMImageDiTLoader"], 0], **inputs})
        prompt[ids["GLMImageConditioning"]]["inputs"]["model"] = ["800", 0]
    else:
        with_node(prompt, "800", class_type, {"model": [ids["GLMImageConditioning"], 0], **inputs})
        prompt[ids["KSampler"]]["inputs"]["model"] = ["800", 0]
    return prompt


# --------------------------------------------------------------------------- model sampling nodes


def test_model_sampling_nodes_before_and_after_the_conditioning_node(comfy_server, base, ids, baseline):
    """SD3 / AuraFlow with GLM's mu and Flux with exp(shift) = mu: the plain picture in both places (the timestep
    the DiT sees does not depend on the node's scale: AuraFlow's and Flux's timestep is sigma, SD3's 1000
    sigma). Another shift changes the picture, the same way before and after. A shift node before the
    conditioning node is kept (it says so); eps/v model sampling is refused with the node named."""
    same_shift = {"ModelSamplingSD3": {"shift": MU}, "ModelSamplingAuraFlow": {"shift": MU},
                  "ModelSamplingFlux": flux_inputs_for(MU)}
    for class_type, inputs in same_shift.items():
        for place in ("before", "after"):
            got = pixels(comfy_server, model_node(base, ids, class_type, inputs, place))
            assert diff(got, baseline) <= 1, (class_type, place, diff(got, baseline))
    assert f"[GLM-Image] model: keeping the schedule of ModelSamplingFlux (linear shift {MU:.4g})" \
        in comfy_server.log_tail(400_000)

    before = pixels(comfy_server, model_node(base, ids, "ModelSamplingSD3", {"shift": 3.0}, "before"))
    after = pixels(comfy_server, model_node(base, ids, "ModelSamplingSD3", {"shift": 3.0}, "after"))
    assert diff(before, after) <= 1  # the user's shift was kept, not replaced by the size's
    assert diff(before, baseline) > 4
    assert "[GLM-Image] model: keeping the schedule of ModelSamplingSD3 (linear shift 3) placed before this " \
           f"node; GLM-Image's own for 96x128 px is shift {MU:.4g}" in comfy_server.log_tail(400_000)

    discrete = {"sampling": "v_prediction", "zsnr": False}
    message = refused(comfy_server, model_node(base, ids, "ModelSamplingDiscrete", discrete, "before"))
    assert "GLMImageConditioning (node 12): " in message, message
    assert ("GlmImageInputError: ModelSamplingDiscrete: GLM-Image is a flow-matching model (its DiT predicts a "
            "velocity on a 0..1 noise scale); its ModelSamplingDiscrete + V_PREDICTION sampling cannot drive it: "
            "remove the node or use ModelSamplingSD3 / ModelSamplingAuraFlow / ModelSamplingFlux") in message
    message = refused(comfy_server, model_node(base, ids, "ModelSamplingDiscrete", discrete, "after"))
    assert "KSampler (node 13): " in message and "ModelSamplingDiscrete: GLM-Image is a flow-matching" in message


# --------------------------------------------------------------------------- samplers and guiders


def test_other_samplers_and_guiders_give_ksamplers_picture(comfy_server, base, ids, baseline):
    """KSamplerAdvanced over all steps = KSampler. SamplerCustomAdvanced + CFGGuider with the pack's scheduler or
    BasicScheduler 'simple' (equal to GLM's schedule at 4 steps: timesteps 1000/750/500/250) = KSampler.
    DualCFGGuider with cond2 = negative and PerpNegGuider with empty = negative reduce to plain CFG."""
    ks = base[ids["KSampler"]]["inputs"]
    cond = ids["GLMImageConditioning"]
    model, positive, negative, latent = [cond, 0], [cond, 1], [cond, 2], [cond, 3]

    advanced = copy.deepcopy(base)
    advanced[ids["KSampler"]] = {"class_type": "KSamplerAdvanced", "inputs": {
        "model": model, "add_noise": "enable", "noise_seed": ks["seed"], "steps": ks["steps"], "cfg": ks["cfg"],
        "sampler_name": ks["sampler_name"], "scheduler": ks["scheduler"], "positive": positive,
        "negative": negative, "latent_image": latent, "start_at_step": 0, "end_at_step": 10000,
        "return_with_leftover_noise": "disable"}}
    assert diff(pixels(comfy_server, advanced), baseline) == 0

    def custom(guider: tuple[str, dict], sigmas: tuple[str, dict]) -> dict:
        prompt = copy.deepcopy(base)
        with_node(prompt, "810", "RandomNoise", {"noise_seed": ks["seed"]})
        with_node(prompt, "811", *guider)
        with_node(prompt, "812", "KSamplerSelect", {"sampler_name": ks["sampler_name"]})
        with_node(prompt, "813", *sigmas)
        prompt[ids["KSampler"]] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["810", 0], "guider": ["811", 0], "sampler": ["812", 0], "sigmas": ["813", 0],
            "latent_image": latent}}
        return prompt

    cfg = ("CFGGuider", {"model": model, "positive": positive, "negative": negative, "cfg": ks["cfg"]})
    glm = ("GLMImageScheduler", {"model": model, "steps": ks["steps"]})
    basic = ("BasicScheduler", {"model": model, "scheduler": "simple", "steps": ks["steps"], "denoise": 1.0})
    dual = ("DualCFGGuider", {"model": model, "cond1": positive, "cond2": negative, "negative": negative,
                              "cfg_conds": ks["cfg"], "cfg_cond2_negative": 2.0, "style": "regular"})
    perp = ("PerpNegGuider", {"model": model, "positive": positive, "negative": negative,
                              "empty_conditioning": negative, "cfg": ks["cfg"], "neg_scale": 1.0})
    for name, prompt in (("CFGGuider + GLMImageScheduler", custom(cfg, glm)),
                         ("CFGGuider + BasicScheduler", custom(cfg, basic)),
                         ("DualCFGGuider", custom(dual, glm)), ("PerpNegGuider", custom(perp, glm))):
        got = pixels(comfy_server, prompt)
        assert diff(got, baseline) <= 1, (name, diff(got, baseline))


# --------------------------------------------------------------------------- LoRA and merging


def _tiny_lora(server) -> None:
    """A rank-4 diffusers-style LoRA on two of the tiny DiT's layers (as test_native_server's)."""
    from safetensors.torch import save_file

    from glmimage_core.demo.decoder import random_lora

    path = server.base / "models" / "loras" / LORA_NAME
    if path.is_file():
        return
    transformer = server.model_path(FULL_MODEL_NAME) / "transformer"
    lora = {f"transformer.{key}": value for key, value in random_lora(transformer).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(path))


def test_lora_strengths_and_model_merge(comfy_server, base, ids, baseline):
    """LoraLoaderModelOnly at 0 = the plain picture; 1 and -1 change it, differently. ModelMergeSimple(DiT,
    DiT+LoRA, ratio 0.5) weighs the weights ratio*W + (1-ratio)*(W + lora) = W + 0.5 lora: LoRA strength 0.5."""
    _tiny_lora(comfy_server)

    def lora(strength: float, merge: bool = False) -> np.ndarray:
        prompt = model_node(base, ids, "LoraLoaderModelOnly", {"lora_name": LORA_NAME, "strength_model": strength},
                            "before")
        if merge:
            with_node(prompt, "801", "ModelMergeSimple", {"model1": [ids["GLMImageDiTLoader"], 0],
                                                          "model2": ["800", 0], "ratio": 0.5})
            prompt[ids["GLMImageConditioning"]]["inputs"]["model"] = ["801", 0]
        return pixels(comfy_server, prompt)

    assert diff(lora(0.0), baseline) == 0
    plus, minus, half = lora(1.0), lora(-1.0), lora(0.5)
    assert diff(plus, baseline) > 8 and diff(minus, baseline) > 8 and diff(plus, minus) > 8
    assert diff(half, baseline) > 2 and diff(half, plus) > 2
    merged = lora(1.0, merge=True)
    assert diff(merged, half) <= 1, diff(merged, half)
    assert "lora key not loaded" not in comfy_server.log_tail(400_000)


# --------------------------------------------------------------------------- VAE nodes, second passes


def test_vae_nodes_and_second_passes(comfy_server, base, ids, baseline):
    """VAE Decode (Tiled): one tile = the untiled picture; 2x2 tiles run. VAE Encode of the picture -> KSampler at
    denoise 1 = the plain picture (at sigma 1 the latent is weighted by 1 - sigma = 0: it was accepted with the
    right size and channels); at denoise 0.5 a second pass at the same size changes it. A latent upscale
    (LatentUpscaleBy) at the same tokens is refused with the latent named and the way to a larger pass; that
    way (tokens made for 2x the size, the 2x latent at denoise 0.5) renders a 192x256 picture."""
    ks, decode, vae = ids["KSampler"], ids["VAEDecode"], [ids["GLMImageVAELoader"], 0]

    def tiled(tile_size: int) -> np.ndarray:
        prompt = copy.deepcopy(base)
        prompt[decode] = {"class_type": "VAEDecodeTiled", "inputs": {
            "samples": [ks, 0], "vae": vae, "tile_size": tile_size, "overlap": 16, "temporal_size": 64,
            "temporal_overlap": 8}}
        return pixels(comfy_server, prompt)

    assert diff(tiled(256), baseline) <= 1  # one tile (ComfyUI also decodes with half-size tiles): untiled
    # 64 px tiles, 2x2, each decoded alone: the random test VAE's GroupNorm statistics are per tile, so the
    # pixels differ from the untiled ones (only the real VAE can show seams or not); written at full size.
    assert tiled(64).shape == baseline.shape

    def second_pass(latent_from: list, denoise: float, prompt: dict) -> dict:
        with_node(prompt, "821", "KSampler", {**prompt[ks]["inputs"], "latent_image": latent_from,
                                              "denoise": denoise})
        prompt[decode]["inputs"]["samples"] = ["821", 0]
        return prompt

    def encoded() -> dict:
        prompt = copy.deepcopy(base)
        with_node(prompt, "820", "VAEEncode", {"pixels": [decode, 0], "vae": vae})
        prompt["822"] = copy.deepcopy(prompt[decode])  # decode the first pass for the encoder ...
        prompt["820"]["inputs"]["pixels"] = ["822", 0]
        return prompt  # ... while the workflow's decode node shows the second pass

    full = pixels(comfy_server, second_pass(["820", 0], 1.0, encoded()))
    assert diff(full, baseline) <= 1, diff(full, baseline)
    half = pixels(comfy_server, second_pass(["820", 0], 0.5, encoded()))
    assert diff(half, baseline) > 2

    upscaled = copy.deepcopy(base)
    with_node(upscaled, "830", "LatentUpscaleBy", {"samples": [ks, 0], "upscale_method": "nearest-exact",
                                                   "scale_by": 1.5})
    message = refused(comfy_server, second_pass(["830", 0], 0.5, upscaled))
    assert "KSampler (node 821): " in message, message
    assert "GlmImageInputError: latent: the sampler's latent is 144x192 px but the GLM-Image tokens are for 96x128 px" \
        in message
    assert "for a second pass at a larger size, make tokens for that size" in message

    larger = copy.deepcopy(base)
    shape, words = node_id(base, "GLMImageShape"), node_id(base, "GLMImagePrompt")
    generate, extract = node_id(base, "GLMImageGenerateTokens"), node_id(base, "GLMImageExtractTokens")
    cond = ids["GLMImageConditioning"]
    for old, new, inputs in ((shape, "840", {}), (words, "841", {"shape": ["840", 0]}),
                             (generate, "842", {"inputs": ["841", 0]}), (extract, "843", {"tokens": ["842", 0]}),
                             (cond, "844", {"prior": ["843", 0]})):
        with_node(larger, new, base[old]["class_type"], {**base[old]["inputs"], **inputs})
    larger["840"]["inputs"].update(width=192, height=256)
    with_node(larger, "830", "LatentUpscaleBy", {"samples": [ks, 0], "upscale_method": "nearest-exact",
                                                 "scale_by": 2.0})
    second_pass(["830", 0], 0.5, larger)
    larger["821"]["inputs"].update(model=["844", 0], positive=["844", 1], negative=["844", 2])
    assert pixels(comfy_server, larger).shape == (256, 192, 3)
