"""GLM-Image as a native ComfyUI model, in-process with ComfyUI's real sampler, LoRA loader and VAE code.

Reference: diffusers' `GlmImagePipeline(prior_token_ids=...)` on the same tiny
random components (fp32, CPU). Stated tolerance: max |difference| of 1e-4 in
0..1 pixel values (measured ~5e-6 for text-to-image, ~1e-5 for image-to-image):
ComfyUI's Euler step computes x0 and back, diffusers steps on the velocity, and
the schedule's shift is computed with ComfyUI's formula, so the last float bits
differ.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from glmimage_core.demo.decoder import random_lora

TOL = 1e-4
PROMPT = 'A shop sign that says "OPEN" and \u201ctiny\u201d in red'


@pytest.fixture(scope="module")
def pk(comfy_pack):
    """The pack's modules as ComfyUI imports them (one copy of every class, as in the server)."""
    def module(name: str):
        return importlib.import_module(f"{comfy_pack.__name__}.{name}")
    module("glmimage_comfy.lora_keys").install()
    return module


@pytest.fixture(scope="module")
def root(tmp_path_factory, pk):
    return pk("glmimage_core.demo.decoder").build_tiny_full_hub_layout(tmp_path_factory.mktemp("native") / "glm")


@pytest.fixture(scope="module")
def bundle(pk, root):
    return pk("glmimage_core.dit.loading").load_decoder(str(root), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def pipe(root):
    from diffusers import GlmImagePipeline

    pipeline = GlmImagePipeline.from_pretrained(root, torch_dtype=torch.float32, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def native(pk, bundle):
    nm, vae = pk("glmimage_comfy.native_patcher"), pk("glmimage_comfy.vae")
    return nm.native_model(bundle.dit, lambda: vae.preview_factors(bundle.vae_model)), vae.comfy_vae(bundle.vae_model)


def t2i_prior(pk, batch=2, h=4, w=3, seed=0, codebook=64):
    grids = torch.randint(0, codebook, (batch, h, w), generator=torch.Generator().manual_seed(seed))
    return pk("glmimage_core.payloads").PriorTokens(grids=grids, mode="t2i", prompt=PROMPT, codebook_size=codebook)


def i2i_prior(pk, batch=2):
    prior = t2i_prior(pk, batch=batch, seed=1)
    source = torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(2))
    return pk("glmimage_core.payloads").PriorTokens(grids=prior.grids, mode="i2i", prompt='make "it" red',
                                                 codebook_size=64, source_grids=[source])


def picture(h, w, seed=3):
    """A source picture already on the 1/255 grid, so diffusers (which reads a PIL image) sees the same pixels."""
    return torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed)).float() / 255


def ksampler(pk, model, vae, glyph, prior, steps, cfg, seed, sampler="euler", scheduler="simple", sources=None):
    import comfy.sample

    cond = pk("glmimage_comfy.token_conditioning").build_conditioning(model, glyph, prior, None, vae, sources)
    latent = cond.latent["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    samples = comfy.sample.sample(cond.model, noise, steps, cfg, sampler, scheduler, cond.positive, cond.negative,
                                  latent, seed=seed, disable_pbar=True)
    return vae.decode(samples)


def diffusers_reference(pipe, prior, steps, guidance, seed, **extra):
    prompts = [prior.prompt] * prior.batch_size
    out = pipe(prompt=prompts, height=prior.height, width=prior.width, prior_token_ids=prior.d16(),
               num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
               output_type="pt", **extra).images
    return out.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------- equality with diffusers


def test_ksampler_euler_simple_50_steps_matches_diffusers_t2i_batch_2(pk, bundle, pipe, native):
    model, vae = native
    prior = t2i_prior(pk)
    ours = ksampler(pk, model, vae, bundle.glyph, prior, 50, 1.5, seed=7)
    ref = diffusers_reference(pipe, prior, 50, 1.5, seed=7)
    assert ours.shape == (2, 128, 96, 3)
    assert (ours - ref).abs().max() < TOL
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)


def test_ksampler_matches_diffusers_i2i_batch_2(pk, bundle, pipe, native):
    model, vae = native
    prior = i2i_prior(pk)
    source = picture(64, 96)
    ours = ksampler(pk, model, vae, bundle.glyph, prior, 50, 1.5, seed=4, sources=[source])
    pil = Image.fromarray((source.numpy() * 255).round().astype(np.uint8))
    grid = torch.tensor([[1, 4, 6]])
    ref = diffusers_reference(pipe, prior, 50, 1.5, seed=4, image=[[pil], [pil]],
                              prior_token_image_ids=[torch.cat(prior.source_d16())] * 2,
                              source_image_grid_thw=[grid] * 2)
    assert (ours - ref).abs().max() < TOL
    # the sources really condition the picture (positive rows read them, through the batched forward)
    other = ksampler(pk, model, vae, bundle.glyph, prior, 50, 1.5, seed=4, sources=[picture(64, 96, seed=9)])
    assert (ours - other).abs().max() > 1e-3


def diffusers_latent_stats(pipe):
    """GLM-Image's latent normalisation as diffusers' GlmImagePipeline writes it, straight from the VAE config."""
    config = pipe.vae.config
    shape = (1, config.latent_channels, 1, 1)
    return torch.tensor(config.latents_mean).view(shape), torch.tensor(config.latents_std).view(shape)


def test_latent_format_normalises_a_vae_encode_as_diffusers_does(pk, pipe, native):
    """process_in / process_out are what stock nodes see (VAE Encode -> sampler -> VAE Decode); they must be
    diffusers' `(raw - latents_mean) / latents_std` and its inverse, per channel, with the fixture's
    non-trivial statistics (a swapped multiply/divide or a sign of the mean shows here)."""
    model, vae = native
    mean, std = diffusers_latent_stats(pipe)
    assert len(set(mean.flatten().tolist())) == 16 and len(set(std.flatten().tolist())) == 16
    raw = vae.encode(picture(128, 96)[None])  # the ComfyUI VAE: raw diffusers latents
    fmt = model.model.latent_format
    normalised = fmt.process_in(raw)
    torch.testing.assert_close(normalised, (raw - mean) / std, atol=1e-6, rtol=0)
    torch.testing.assert_close(fmt.process_out(normalised), raw, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.model.process_latent_in(raw), normalised, atol=0, rtol=0)


def test_sampling_from_an_encoded_picture_at_half_denoise_matches_diffusers(pk, bundle, pipe, native):
    """Text-to-image from a non-empty latent (VAE Encode -> sampler at denoise 0.5): ComfyUI normalises the
    input latent with process_in, so this is where a wrong normalisation of it changes the picture (at full
    denoise the start sigma is 1 and the input latent drops out). Reference: diffusers' GlmImagePipeline
    started from the same noisy latent, built with diffusers' own normalisation, over the same second half
    of GLM-Image's 50-step schedule."""
    import comfy.sample
    import comfy.samplers

    model, vae = native
    prior = t2i_prior(pk, batch=1, seed=6)
    cond = pk("glmimage_comfy.token_conditioning").build_conditioning(model, bundle.glyph, prior)
    raw = vae.encode(picture(prior.height, prior.width, seed=11)[None])
    assert raw.shape == cond.latent["samples"].shape
    noise = comfy.sample.prepare_noise(raw, 5)
    start = 25
    sigmas = pk("glmimage_comfy.decoder_sampling").glm_sigmas(cond.model, 50)[start:]
    samples = comfy.sample.sample_custom(cond.model, noise, 1.5, comfy.samplers.sampler_object("euler"), sigmas,
                                         cond.positive, cond.negative, raw, disable_pbar=True, seed=5)
    ours = vae.decode(samples)

    mean, std = diffusers_latent_stats(pipe)
    sigma = float(sigmas[0])
    noisy = sigma * noise + (1 - sigma) * (raw - mean) / std
    timesteps = pk("glmimage_core.dit.sampling").glm_timesteps(50)[start:]
    ref = diffusers_reference(pipe, prior, len(timesteps), 1.5, seed=5, latents=noisy,
                              timesteps=list(timesteps), sigmas=list(timesteps / 1000))
    assert (ours - ref).abs().max() < TOL
    # the input picture really shapes the result (half the way from it, not from noise alone)
    other = vae.encode(picture(prior.height, prior.width, seed=12)[None])
    elsewhere = comfy.sample.sample_custom(cond.model, noise, 1.5, comfy.samplers.sampler_object("euler"), sigmas,
                                           cond.positive, cond.negative, other, disable_pbar=True, seed=5)
    assert (vae.decode(elsewhere) - ours).abs().max() > 1e-2


def test_decode_node_path_equals_ksampler_and_the_core_loop(pk, bundle, native):
    model, vae = native
    prior = t2i_prior(pk, seed=5)
    node = pk("glmimage_comfy.decoder_sampling").decode_with_comfy(bundle, prior, None, 50, 1.5, 3)
    assert torch.equal(node, ksampler(pk, model, vae, bundle.glyph, prior, 50, 1.5, seed=3))
    core = pk("glmimage_core.dit.sampling").decode_prior(bundle, prior, steps=50, guidance=1.5, seed=3)
    assert (node - core).abs().max() < TOL


def test_glm_schedule_is_ksamplers_simple_at_50_steps_and_diffusers_at_any(pk, native):
    import comfy.samplers
    from diffusers import FlowMatchEulerDiscreteScheduler

    sampling_mod = pk("glmimage_comfy.decoder_sampling")
    model = pk("glmimage_comfy.flow_sampling").with_shift_for(native[0], 1024, 1024)
    sampling = model.get_model_object("model_sampling")
    assert abs(float(sampling.shift) - 3.25) < 1e-6  # mu at 1024x1024: sqrt(4096 / 256) * 0.75 + 0.25
    simple = comfy.samplers.calculate_sigmas(sampling, "simple", 50)
    torch.testing.assert_close(sampling_mod.glm_sigmas(model, 50), simple.float(), atol=1e-6, rtol=0)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    timesteps = pk("glmimage_core.dit.sampling").glm_timesteps(30)
    scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / 1000, mu=3.25)
    torch.testing.assert_close(sampling_mod.glm_sigmas(model, 30), scheduler.sigmas.float(), atol=1e-6, rtol=0)
    # the DiT sees the unshifted timestep minus one, whatever sigma ComfyUI hands over
    latent = torch.zeros(1, 4, 128, 128)  # a 1024x1024 px latent: mu 3.25
    seen = model.model.process_timestep(sampling.timestep(scheduler.sigmas[:-1]).float(), x=latent)
    torch.testing.assert_close(seen, torch.from_numpy(timesteps) - 1, atol=2e-3, rtol=0)


def flux_inputs_for(mu: float) -> dict:
    """ModelSamplingFlux inputs whose exponential shift equals GLM-Image's linear `mu` (exp(shift) = mu).
    Flux's shift = (w*h/256)*mm + b with mm = (max-base)/3840, b = base - 256*mm; at 16x16 px and base 0 it is
    -255*max/3840, negative as ln(mu) is for the small pictures (mu < 1) the tests render."""
    return {"max_shift": -math.log(mu) * 3840 / 255, "base_shift": 0.0, "width": 16, "height": 16}


def test_stock_model_sampling_nodes_change_the_schedule_not_what_the_dit_is_told(pk, bundle, native):
    """The DiT's timestep comes from the noise level and GLM-Image's own mu for the latent's size, whatever
    model sampling made the schedule: ModelSamplingSD3 (timestep = 1000 sigma), AuraFlow (= sigma) and Flux
    (= sigma, exponential shift, no `multiplier`) all tell it t - 1 for GLM's sigmas. (The code before read
    `sampling.multiplier` / `.shift`: AttributeError on Flux, 1000x too small a timestep on AuraFlow.)"""
    from comfy_extras import nodes_model_advanced as advanced

    nm = pk("glmimage_comfy.flow_sampling")
    errors = pk("glmimage_core.errors")
    model = native[0]
    latent = torch.zeros(1, 4, 16, 12)  # 96x128 px
    mu = nm.latent_shift(bundle.dit, latent)
    assert abs(mu - ((48 / 256) ** 0.5 * 0.75 + 0.25)) < 1e-9  # 6x8 DiT patches
    timesteps = torch.from_numpy(pk("glmimage_core.dit.sampling").glm_timesteps(8))
    sigmas = mu * (timesteps / 1000) / (1 + (mu - 1) * (timesteps / 1000))  # GLM's shifted sigmas
    patched = {
        "ModelSamplingSD3": advanced.ModelSamplingSD3().patch(model, shift=mu)[0],
        "ModelSamplingSD3 shift 3": advanced.ModelSamplingSD3().patch(model, shift=3.0)[0],
        "ModelSamplingAuraFlow": advanced.ModelSamplingAuraFlow().patch_aura(model, shift=mu)[0],
        "ModelSamplingFlux": advanced.ModelSamplingFlux().patch(model, **flux_inputs_for(mu))[0],
    }
    reference = pk("glmimage_comfy.decoder_sampling").glm_sigmas(nm.with_shift_for(model, 128, 96), 8)
    for name, patcher in patched.items():
        sampling = patcher.get_model_object("model_sampling")
        seen = nm.dit_timestep_for(sampling, sampling.timestep(sigmas).float(), latent, bundle.dit)
        torch.testing.assert_close(seen, timesteps - 1, atol=2e-3, rtol=0, msg=name)
        if name != "ModelSamplingSD3 shift 3":  # the same shift: the same schedule as the pack's own
            got = pk("glmimage_comfy.decoder_sampling").glm_sigmas(patcher, 8)
            torch.testing.assert_close(got, reference, atol=1e-5, rtol=0, msg=name)
    # eps / v-prediction model sampling is refused by its node's name, at sampling time and at the scheduler
    discrete = advanced.ModelSamplingDiscrete().patch(model, "v_prediction", False)[0]
    sampling = discrete.get_model_object("model_sampling")
    with pytest.raises(errors.GlmImageInputError, match="ModelSamplingDiscrete: GLM-Image is a flow-matching"):
        nm.dit_timestep_for(sampling, torch.tensor([500.0]), latent, bundle.dit)
    with pytest.raises(errors.GlmImageInputError, match="ModelSamplingDiscrete: .* use ModelSamplingSD3"):
        pk("glmimage_comfy.decoder_sampling").glm_sigmas(discrete, 8)


def test_conditioning_keeps_a_users_model_sampling_and_replaces_only_its_own(pk, bundle, native):
    """A shift node placed before 'GLM-Image conditioning' is the user's choice: kept, with a note; the pack's
    own default (and a previous conditioning node's) gets the size's shift; non-flow sampling is refused."""
    from comfy_extras import nodes_model_advanced as advanced

    cond_mod, nm = pk("glmimage_comfy.token_conditioning"), pk("glmimage_comfy.flow_sampling")
    errors = pk("glmimage_core.errors")
    model = native[0]
    prior = t2i_prior(pk, batch=1)  # 96x128 px
    mu = (48 / 256) ** 0.5 * 0.75 + 0.25
    own = cond_mod.build_conditioning(model, bundle.glyph, prior)
    assert own.note is None
    assert abs(own.model.get_model_object("model_sampling").shift - mu) < 1e-9
    again = cond_mod.build_conditioning(nm.with_shift_for(model, 1024, 1024), bundle.glyph, prior)
    assert again.note is None and abs(again.model.get_model_object("model_sampling").shift - mu) < 1e-9
    users = advanced.ModelSamplingSD3().patch(model, shift=3.0)[0]
    kept = cond_mod.build_conditioning(users, bundle.glyph, prior)
    assert kept.model.get_model_object("model_sampling") is users.get_model_object("model_sampling")
    assert kept.note.startswith("model: keeping the schedule of ModelSamplingSD3 (linear shift 3) placed before")
    assert "GLM-Image's own for 96x128 px is shift 0.5748" in kept.note
    aura = advanced.ModelSamplingAuraFlow().patch_aura(model, shift=2.0)[0]
    assert "ModelSamplingAuraFlow (linear shift 2)" in cond_mod.build_conditioning(aura, bundle.glyph, prior).note
    flux = advanced.ModelSamplingFlux().patch(model, **flux_inputs_for(mu))[0]
    assert "ModelSamplingFlux (linear shift 0.5748)" in cond_mod.build_conditioning(flux, bundle.glyph, prior).note
    for kind in ("eps", "v_prediction", "img_to_img"):
        discrete = advanced.ModelSamplingDiscrete().patch(model, kind, False)[0]
        with pytest.raises(errors.GlmImageInputError, match="ModelSamplingDiscrete: GLM-Image is a flow-matching"):
            cond_mod.build_conditioning(discrete, bundle.glyph, prior)


# --------------------------------------------------------------------------- stock tools on the MODEL


def test_other_samplers_run(pk, bundle, native):
    model, vae = native
    prior = t2i_prior(pk, batch=1)
    for sampler in ("dpmpp_2m", "uni_pc"):
        image = ksampler(pk, model, vae, bundle.glyph, prior, 8, 1.5, seed=1, sampler=sampler)
        assert image.shape == (1, 128, 96, 3) and torch.isfinite(image).all()


def test_peft_lora_through_comfyuis_loader_equals_the_weights_merged_by_hand(pk, bundle, native, tmp_path):
    import comfy.sd
    import comfy.utils
    from safetensors.torch import save_file

    model, vae = native
    strength = 0.8
    targets = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"]
    lora = {f"transformer.{key}": value for key, value in
            random_lora(bundle.transformer, targets, scale=0.2).items()}
    save_file(lora, str(tmp_path / "glm_lora.safetensors"))
    loaded = comfy.utils.load_torch_file(str(tmp_path / "glm_lora.safetensors"))
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, loaded, strength, 0)  # what LoraLoaderModelOnly does
    assert len(with_lora.patches) == len(targets)

    merged_model = merged_by_hand(pk, bundle, lora, {name: strength for name in targets})
    prior = t2i_prior(pk, batch=1, seed=8)
    ours = ksampler(pk, with_lora, vae, bundle.glyph, prior, 6, 1.5, seed=2)
    by_hand = ksampler(pk, merged_model, vae, bundle.glyph, prior, 6, 1.5, seed=2)
    plain = ksampler(pk, model, vae, bundle.glyph, prior, 6, 1.5, seed=2)
    assert (ours - by_hand).abs().max() < 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the LoRA changed the picture


def merged_by_hand(pk, bundle, lora, scales: dict):
    """A MODEL over a copy of the DiT whose weights are W + scale * B @ A per module: diffusers' LoRA maths."""
    import comfy.model_management

    # ComfyUI leaves the last sampled MODEL's patches merged into the shared weights until it unloads it
    comfy.model_management.unload_all_models()
    merged = dataclasses.replace(bundle.dit, transformer=copy.deepcopy(bundle.transformer), lock=threading.Lock())
    for name, scale in scales.items():
        delta = lora[f"transformer.{name}.lora_B.weight"] @ lora[f"transformer.{name}.lora_A.weight"]
        merged.transformer.get_submodule(name).weight.data += scale * delta
    return pk("glmimage_comfy.native_patcher").native_model(merged)


@pytest.fixture
def loras_folder(tmp_path, monkeypatch):
    """A real models/loras entry for this test only (ComfyUI's folder_paths, restored afterwards)."""
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["loras"]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(tmp_path)] + list(paths), extensions))
    return tmp_path


def write_diffusers_lora(bundle, folder, file_name: str, targets: list[str], rank: int, config: dict) -> dict:
    """A LoRA file as diffusers 0.42.1 writes one (LoraBaseMixin._save_lora_weights: weights and the
    adapter settings both prefixed 'transformer.', the settings as JSON in 'lora_adapter_metadata')."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    layers = random_lora(bundle.transformer, targets, rank, seed=len(file_name), scale=0.2)
    LoraBaseMixin._save_lora_weights(save_directory=str(folder), lora_layers={"transformer": layers},
                                     lora_metadata={"transformer": {"r": rank, **config}}, weight_name=file_name)
    return {f"transformer.{key}": value for key, value in layers.items()}


def test_lora_with_its_alpha_in_diffusers_metadata_renders_at_diffusers_strength(pk, bundle, native, loras_folder):
    """lora_alpha = 2 x r, kept only in the file's metadata: 'Load GLM-Image LoRA' at strength 1 gives the
    DiT merged with diffusers' scale (alpha / r = 2); stock LoraLoaderModelOnly reads no metadata (scale 1)
    and needs strength 2 for the same picture, as the README says."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py

    from safetensors import safe_open

    model, vae = native
    targets = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"]
    lora = write_diffusers_lora(bundle, loras_folder, "glm_alpha2x.safetensors", targets, 4, {"lora_alpha": 8})
    with safe_open(str(loras_folder / "glm_alpha2x.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.lora_alpha"] == 8
        assert not any(k.endswith(".alpha") for k in f.keys())  # the alpha is in the metadata only
    node = pk("nodes.lora").GLMImageLoraLoader
    prior = t2i_prior(pk, batch=1, seed=8)
    render = lambda m: ksampler(pk, m, vae, bundle.glyph, prior, 6, 1.5, seed=2)  # noqa: E731
    ours = render(node.execute(model, "glm_alpha2x.safetensors", 1.0).args[0])
    reference = render(merged_by_hand(pk, bundle, lora, {name: 8 / 4 for name in targets}))
    stock_1 = render(comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "glm_alpha2x.safetensors", 1.0)[0])
    stock_2 = render(comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "glm_alpha2x.safetensors", 2.0)[0])
    assert (ours - reference).abs().max() < 1e-5
    assert (stock_2 - reference).abs().max() < 1e-5
    assert (stock_1 - reference).abs().max() > 1e-3  # what the stock loader gives at the strength diffusers uses


def test_lora_alpha_pattern_and_rslora_follow_peft(pk, bundle, native, loras_folder):
    """Per-module alpha_pattern (PEFT's rule: the first pattern matching the end of the module name) and
    rsLoRA (lora_alpha / sqrt(r)) as diffusers applies them; malformed metadata names the file."""
    model, vae = native
    targets = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_k", "transformer_blocks.1.ff.net.2"]
    config = {"lora_alpha": 2, "alpha_pattern": {"ff.net.2": 12, r"1\.attn1\.to_k": 6}, "use_rslora": True}
    lora = write_diffusers_lora(bundle, loras_folder, "glm_pattern.safetensors", targets, 4, config)
    node = pk("nodes.lora").GLMImageLoraLoader
    prior = t2i_prior(pk, batch=1, seed=8)
    ours = ksampler(pk, node.execute(model, "glm_pattern.safetensors", 0.5).args[0], vae, bundle.glyph, prior, 6,
                    1.5, seed=2)
    scales = {targets[0]: 0.5 * 2 / 2, targets[1]: 0.5 * 6 / 2, targets[2]: 0.5 * 12 / 2}  # alpha / sqrt(4)
    reference = ksampler(pk, merged_by_hand(pk, bundle, lora, scales), vae, bundle.glyph, prior, 6, 1.5, seed=2)
    assert (ours - reference).abs().max() < 1e-5

    lora_metadata = pk("glmimage_comfy.lora_metadata")
    errors = pk("glmimage_core.errors")
    with pytest.raises(errors.GlmImageInputError, match="lora_name 'x': its 'lora_adapter_metadata' metadata is not JSON"):
        lora_metadata.with_peft_alphas(lora, {"lora_adapter_metadata": "{r: 4"}, name="lora_name 'x'")
    with pytest.raises(errors.GlmImageInputError, match="the alpha of transformer_blocks.0.attn1.to_q .* is 'eight'"):
        lora_metadata.with_peft_alphas(lora, {"lora_adapter_metadata": json.dumps({"lora_alpha": "eight"})})
    assert lora_metadata.with_peft_alphas(lora, {"format": "pt"}) == (lora, None)  # no metadata: as stock


def test_streamed_dit_gives_the_pixels_of_a_full_load(pk, bundle, native):
    sampling = pk("glmimage_comfy.decoder_sampling")
    model, _ = native
    prior = i2i_prior(pk, batch=1)
    source = [picture(64, 96)]
    full = sampling.decode_with_comfy(bundle, prior, None, 6, 1.5, 3, source)
    budget = model.model_size() // 5
    streamed = sampling.decode_with_comfy(bundle, prior, None, 6, 1.5, 3, source, max_resident=budget)
    assert model.loaded_size() <= budget < model.model_size()
    assert sum(getattr(m, "comfy_cast_weights", False) for m in bundle.transformer.modules()) > 10
    assert torch.equal(streamed, full)


def test_two_loaders_of_one_dit_each_sample_with_their_own_vram_limit(pk, root, bundle, native):
    """Two 'Load GLM-Image DiT' (and two 'Load GLM-Image decoder') nodes on the same folder in one graph share the
    loaded weights but not the VRAM limit: each sampler runs with the limit of the loader it is wired to, whatever
    the order the loaders ran in (before, the limit was written onto the shared model: the last loader won)."""
    import comfy.sample
    import comfy.samplers

    nodes = pk("nodes")
    budget_gb = 0.2 * native[0].model_size() / (1 << 30)
    common = dict(model=str(root), weight_dtype="default", dtype="fp32", device="cpu")
    limited = nodes.GLMImageDiTLoader.execute(vram_limit_gb=budget_gb, **common)[0]
    unlimited = nodes.GLMImageDiTLoader.execute(vram_limit_gb=0.0, **common)[0]  # ran last: won before the fix
    assert limited.model is unlimited.model  # one DiT in memory
    cond_mod = pk("glmimage_comfy.token_conditioning")
    prior = t2i_prior(pk, batch=1, seed=5)

    def resident_while_sampling(model) -> int:
        cond = cond_mod.build_conditioning(model, bundle.glyph, prior)
        latent = cond.latent["samples"]
        seen = []
        comfy.sample.sample_custom(cond.model, comfy.sample.prepare_noise(latent, 0), 1.5,
                                   comfy.samplers.sampler_object("euler"), torch.tensor([1.0, 0.5, 0.0]),
                                   cond.positive, cond.negative, latent, disable_pbar=True,
                                   callback=lambda *args: seen.append(cond.model.loaded_size()))
        return max(seen)

    full = unlimited.model_size()
    for _ in range(2):  # alternating: each run gets its own loader's limit again
        assert resident_while_sampling(limited) <= budget_gb * (1 << 30) < full
        assert resident_while_sampling(unlimited) == full
    # the decoder loader: one bundle of parts, one limit per loader
    node = nodes.GLMImageDecoderLoader
    small = node.execute(model=str(root), dtype="fp32", device="cpu", vram_limit_gb=budget_gb)[0]
    whole = node.execute(model=str(root), dtype="fp32", device="cpu", vram_limit_gb=0.0)[0]
    assert small.dit is whole.dit and small.lock is whole.lock
    assert small.vram_limit == int(budget_gb * (1 << 30)) and whole.vram_limit is None


# --------------------------------------------------------------------------- deep clones


def storages(module: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def deep_clones(patcher) -> list:
    """Every way this ComfyUI makes a copy of a patcher with weights of its own, from its cached_patcher_init:
    the factory itself (as ComfyUI's dynamic-VRAM fallback calls it), and where ComfyUI has them (0.33),
    clone(force_deepcopy=True) (the training node) and deepclone_multigpu (multi-GPU, Select VAE Device)."""
    import inspect

    import comfy.model_patcher

    factory, args = patcher.cached_patcher_init[:2]
    clones = [factory(*args, disable_dynamic=True)]
    if "force_deepcopy" in inspect.signature(comfy.model_patcher.ModelPatcher.clone).parameters:
        clones += [patcher.clone(force_deepcopy=True), patcher.deepclone_multigpu()]
    return clones


def test_deep_clones_of_the_model_hold_their_own_weights_and_sample_the_same_picture(pk, bundle, native):
    """The MODEL registers a cached_patcher_init as ComfyUI's own loaders do; without it ComfyUI's deep
    clones raise ("cached_patcher_init is not initialized") or, on 0.3.75, there is nothing to call."""
    model, vae = native
    prior = t2i_prior(pk, batch=1, seed=9)
    picture_of = ksampler(pk, model, vae, bundle.glyph, prior, 6, 1.5, seed=3)
    clones = deep_clones(model)
    for clone in clones:
        assert type(clone.model) is type(model.model) and clone.model is not model.model
        assert clone.model.dit.transformer is not bundle.transformer
        assert not storages(clone.model) & storages(model.model)
        assert torch.equal(ksampler(pk, clone, vae, bundle.glyph, prior, 6, 1.5, seed=3), picture_of)
    assert pk("glmimage_core.memory.comfy_memory").patcher_of(bundle.dit) is model  # the cached DiT keeps its one patcher


def test_deep_clones_of_the_vae_hold_their_own_weights_and_decode_the_same_picture(pk, bundle, native):
    _, vae = native
    raw = bundle.dit.latent_stats.denormalise(torch.randn(1, 16, 12, 8, generator=torch.Generator().manual_seed(1)))
    pixels = vae.decode(raw)
    for patcher in deep_clones(vae.patcher):
        clone = copy.copy(vae)  # what ComfyUI's Select VAE Device does with a deep-cloned patcher
        clone.patcher, clone.first_stage_model = patcher, patcher.model
        assert type(patcher.model) is type(vae.first_stage_model) and patcher.model is not vae.first_stage_model
        assert not storages(patcher.model) & storages(vae.first_stage_model)
        assert torch.equal(clone.decode(raw), pixels)


# --------------------------------------------------------------------------- patcher class


def test_models_use_comfyuis_core_patcher_class_as_set_at_run_time(pk, native, tmp_path, monkeypatch):
    """Core loaders build `comfy.model_patcher.CoreModelPatcher`, which main.py replaces (after import) by
    ModelPatcherDynamic on NVIDIA; the pack's DiT, VAE and generic (AR / glyph encoder) patchers must be that
    class too, looked up when they are built, and plain ModelPatcher where ComfyUI has none (0.3.75) or when
    ComfyUI asks for a non-dynamic copy."""
    import comfy.model_patcher as mp

    decoder_loading, memory = pk("glmimage_core.dit.loading"), pk("glmimage_core.memory.comfy_memory")
    model, vae = native
    as_found = getattr(mp, "CoreModelPatcher", mp.ModelPatcher)  # without main.py's switch
    assert type(model) is as_found and type(vae.patcher) is as_found

    class CorePatcher(mp.ModelPatcher):  # a real ModelPatcher subclass, set the way main.py sets its own
        pass

    monkeypatch.setattr(mp, "CoreModelPatcher", CorePatcher, raising=False)
    root = pk("glmimage_core.demo.decoder").build_tiny_decoder(tmp_path / "glm")
    dit = decoder_loading.load_dit(str(root), dtype="fp32", device="cpu")  # what 'Load GLM-Image DiT' calls
    assert type(pk("glmimage_comfy.native_patcher").native_model(dit)) is CorePatcher
    new_vae = pk("glmimage_comfy.vae").comfy_vae(decoder_loading.load_vae(str(root), dtype="fp32", device="cpu"))
    assert type(new_vae.patcher) is CorePatcher
    glyph = decoder_loading.load_glyph_encoder(str(root), dtype="fp32", device="cpu")
    memory.ensure_on_device(glyph, glyph.text_encoder, glyph.device)  # the AR model's and glyph encoder's path
    assert type(memory.patcher_of(glyph)) is CorePatcher
    import comfy.model_management

    if hasattr(comfy.model_management, "archive_model_dtypes"):  # 0.33: what dynamic VRAM casts weights back to
        for layer in (dit.transformer.transformer_blocks[0].ff.net[2], new_vae.first_stage_model.vae.decoder.conv_in,
                      glyph.text_encoder.shared):
            assert layer.weight_comfy_model_dtype == layer.weight.dtype
    for patcher in (model, vae.patcher):  # fresh copies: dynamic unless ComfyUI asks otherwise
        factory, args = patcher.cached_patcher_init[:2]
        assert type(factory(*args)) is CorePatcher
        assert type(factory(*args, disable_dynamic=True)) is mp.ModelPatcher


def test_vram_checks_ask_the_patcher_what_comfyui_can_free(pk):
    """0.33's ModelPatcher.get_free_memory also counts VRAM that dynamic-VRAM models give back, which
    model_management.get_free_memory leaves out: the pack's checks ask the patcher where it has the method."""
    import comfy.model_patcher as mp

    runtime = pk("glmimage_core.memory.host")
    asked = []

    class Patcher(mp.ModelPatcher):
        def get_free_memory(self, device):
            asked.append(device)
            return 7 << 30

    patcher = Patcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    gpu = torch.device("cuda", 0)  # only named: the method answers, no GPU is touched
    assert runtime.free_vram(gpu, patcher) == 7 << 30 and asked == [gpu]
    assert runtime.free_vram(torch.device("cpu"), patcher) is None  # RAM is not budgeted


# --------------------------------------------------------------------------- VAE and previews


def test_comfy_vae_decodes_and_encodes_like_diffusers_and_tiles_with_comfyuis_tiler(pk, bundle, native):
    _, vae = native
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(1, 16, 24, 20, generator=g)  # model space, 192x160 px
    core = pk("glmimage_core.dit.sampling").decode_latents(bundle.vae_model, latents, tiled=False)
    raw = bundle.dit.latent_stats.denormalise(latents)
    assert torch.equal(vae.decode(raw), core)
    # ComfyUI's tiler (what 'VAE Decode (Tiled)' runs) over our VAE: a picture within one tile is the untiled
    # picture; with several tiles, the random test VAE differs at tile borders (its GroupNorm statistics are
    # per tile), so only the real VAE can show seams or not.
    whole = vae.decode_tiled(raw, tile_x=64, tile_y=64, overlap=8)
    torch.testing.assert_close(whole, core, atol=1e-6, rtol=0)
    split = vae.decode_tiled(raw, tile_x=16, tile_y=16, overlap=4)
    assert split.shape == core.shape and torch.isfinite(split).all()
    pixels = picture(64, 96)[None]
    encoded = vae.encode(pixels)
    with torch.no_grad():
        expected = bundle.vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(encoded, expected, atol=1e-6, rtol=0)


def test_the_vae_has_every_attribute_comfyuis_own_vae_sets_on_a_real_load(pk, native):
    """The pack's VAE takes ComfyUI's defaults from `comfy.sd.VAE.__init__(sd={})`, which returns early ("No VAE
    weights detected"), then sets the rest itself. Compared here with a VAE that ComfyUI really loads (its own
    AutoencoderKL, from a state dict and config): an attribute a newer ComfyUI sets, and reads in VAE Decode /
    Encode / tiling, but that the early return skips, fails this test instead of a user's graph."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    params = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3,
                                           "out_ch": 3, "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
                                           "attn_resolutions": [], "dropout": 0.0}}
    stock = comfy.sd.VAE(sd=AutoencoderKL(**params).state_dict(), config={"params": params})
    assert stock.first_stage_model is not None and stock.patcher is not None  # really loaded
    _, ours = native
    missing = sorted(set(vars(stock)) - set(vars(ours)))
    assert not missing, f"ComfyUI's VAE sets {missing} on a real load; GlmImageVAE.__init__ must set them too"
    for name, value in vars(stock).items():
        mine = getattr(ours, name)
        assert callable(mine) == callable(value), name
        if isinstance(value, (bool, int, float, torch.device, torch.dtype, list)) and value is not None:
            assert isinstance(mine, type(value)), (name, value, mine)
    assert type(ours.patcher) is type(stock.patcher)  # the same patcher class as ComfyUI's own VAE


def test_preview_factors_are_a_least_squares_fit_made_once_from_the_vae(pk, bundle, native):
    vae_mod = pk("glmimage_comfy.vae")
    # the fit recovers a known affine map exactly
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 16, 8, 8, generator=g)
    truth, bias = torch.randn(16, 3, generator=g), torch.randn(3, generator=g)
    colours = (latents.permute(0, 2, 3, 1) @ truth + bias).permute(0, 3, 1, 2)
    factors, fitted_bias = vae_mod.fit_rgb_factors(latents, colours)
    torch.testing.assert_close(torch.tensor(factors), truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(fitted_bias), bias, atol=1e-4, rtol=0)
    # the MODEL's latent format fits them from the decoder's VAE the first time a previewer asks, then keeps them
    model, _ = native
    fmt = model.model.latent_format
    first = fmt.latent_rgb_factors
    assert len(first) == 16 and len(first[0]) == 3 and len(fmt.latent_rgb_factors_bias) == 3
    assert fmt.latent_rgb_factors is first and first == vae_mod.preview_factors(bundle.vae_model)[0]


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_name_what_is_wrong(pk, bundle, native):
    import comfy.sample

    errors = pk("glmimage_core.errors")
    cond_mod = pk("glmimage_comfy.token_conditioning")
    model, vae = native
    with pytest.raises(errors.GlmImageInputError, match="codebook of 32 ids but the decoder .* knows 64"):
        cond_mod.build_conditioning(model, bundle.glyph, t2i_prior(pk, codebook=32))
    with pytest.raises(errors.GlmImageInputError, match="source images: 0 given, but the prior tokens were made"):
        cond_mod.build_conditioning(model, bundle.glyph, i2i_prior(pk), None, vae, None)
    with pytest.raises(errors.GlmImageInputError, match="vae: image-to-image tokens need the VAE"):
        cond_mod.build_conditioning(model, bundle.glyph, i2i_prior(pk), None, None, [picture(64, 96)])
    cond = cond_mod.build_conditioning(model, bundle.glyph, t2i_prior(pk, batch=1))
    wrong = torch.zeros(1, 16, 24, 24)  # a 192x192 latent for 96x128 tokens
    with pytest.raises(errors.GlmImageInputError, match="latent: the sampler's latent is 192x192 px but the GLM-Image "
                                                         "tokens are for 96x128 px: .*a second pass at a larger size, "
                                                         "make tokens for that size"):
        comfy.sample.sample(cond.model, comfy.sample.prepare_noise(wrong, 0), 2, 1.5, "euler", "simple",
                            cond.positive, cond.negative, wrong, disable_pbar=True)
    import comfy.model_patcher

    other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    with pytest.raises(errors.GlmImageInputError, match="model: a Linear is connected"):
        cond_mod.build_conditioning(other, bundle.glyph, t2i_prior(pk))


# --------------------------------------------------------------------------- batched guidance (core loop)


@pytest.mark.parametrize("mode", ["t2i", "i2i"])
def test_batched_guidance_gives_the_sequential_pixels(pk, bundle, mode):
    """Both branches in one forward vs one forward each, fp32 on the CPU: the same pixels up to the float
    rounding of batched matrix products (stated tolerance 1e-5; bitwise equality cannot hold for a GEMM
    whose batch size changes)."""
    decoding = pk("glmimage_core.dit.sampling")
    prior = t2i_prior(pk) if mode == "t2i" else i2i_prior(pk)
    sources = [picture(64, 96)] if mode == "i2i" else None
    batched = decoding.decode_prior(bundle, prior, steps=6, guidance=1.5, seed=2, source_images=sources,
                                    guidance_batching="batched")
    sequential = decoding.decode_prior(bundle, prior, steps=6, guidance=1.5, seed=2, source_images=sources,
                                       guidance_batching="sequential")
    assert (batched - sequential).abs().max() < 1e-5
