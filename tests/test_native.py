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
import threading

import numpy as np
import pytest
import torch
from PIL import Image

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
    return pk("glmimage_core.demo_decoder").build_tiny_full_hub_layout(tmp_path_factory.mktemp("native") / "glm")


@pytest.fixture(scope="module")
def bundle(pk, root):
    return pk("glmimage_core.decoder_loading").load_decoder(str(root), dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def pipe(root):
    from diffusers import GlmImagePipeline

    pipeline = GlmImagePipeline.from_pretrained(root, torch_dtype=torch.float32, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def native(pk, bundle):
    nm, vae = pk("glmimage_comfy.native_model"), pk("glmimage_comfy.vae")
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

    cond = pk("glmimage_comfy.conditioning").build_conditioning(model, glyph, prior, None, vae, sources)
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


def test_decode_node_path_equals_ksampler_and_the_core_loop(pk, bundle, native):
    model, vae = native
    prior = t2i_prior(pk, seed=5)
    node = pk("glmimage_comfy.decode_node").decode_with_comfy(bundle, prior, None, 50, 1.5, 3)
    assert torch.equal(node, ksampler(pk, model, vae, bundle.glyph, prior, 50, 1.5, seed=3))
    core = pk("glmimage_core.dit_sampling").decode_prior(bundle, prior, steps=50, guidance=1.5, seed=3)
    assert (node - core).abs().max() < TOL


def test_glm_schedule_is_ksamplers_simple_at_50_steps_and_diffusers_at_any(pk, native):
    import comfy.samplers
    from diffusers import FlowMatchEulerDiscreteScheduler

    sampling_mod = pk("glmimage_comfy.decode_node")
    model = pk("glmimage_comfy.native_model").with_shift_for(native[0], 1024, 1024)
    sampling = model.get_model_object("model_sampling")
    assert abs(float(sampling.shift) - 3.25) < 1e-6  # mu at 1024x1024: sqrt(4096 / 256) * 0.75 + 0.25
    simple = comfy.samplers.calculate_sigmas(sampling, "simple", 50)
    torch.testing.assert_close(sampling_mod.glm_sigmas(model, 50), simple.float(), atol=1e-6, rtol=0)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="linear")
    timesteps = pk("glmimage_core.dit_sampling").glm_timesteps(30)
    scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / 1000, mu=3.25)
    torch.testing.assert_close(sampling_mod.glm_sigmas(model, 30), scheduler.sigmas.float(), atol=1e-6, rtol=0)
    # the DiT sees the unshifted timestep minus one, whatever sigma ComfyUI hands over
    seen = model.model.process_timestep(sampling.timestep(scheduler.sigmas[:-1]).float())
    torch.testing.assert_close(seen, torch.from_numpy(timesteps) - 1, atol=2e-3, rtol=0)


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
    g = torch.Generator().manual_seed(0)
    rank, strength = 4, 0.8
    targets = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"]
    lora = {}
    for name in targets:
        weight = bundle.transformer.get_submodule(name).weight
        lora[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, weight.shape[1], generator=g) * 0.2
        lora[f"transformer.{name}.lora_B.weight"] = torch.randn(weight.shape[0], rank, generator=g) * 0.2
    save_file(lora, str(tmp_path / "glm_lora.safetensors"))
    loaded = comfy.utils.load_torch_file(str(tmp_path / "glm_lora.safetensors"))
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, loaded, strength, 0)  # what LoraLoaderModelOnly does
    assert len(with_lora.patches) == len(targets)

    merged = dataclasses.replace(bundle.dit, transformer=copy.deepcopy(bundle.transformer), lock=threading.Lock())
    for name in targets:
        layer = merged.transformer.get_submodule(name)
        delta = lora[f"transformer.{name}.lora_B.weight"] @ lora[f"transformer.{name}.lora_A.weight"]
        layer.weight.data += strength * delta
    merged_model = pk("glmimage_comfy.native_model").native_model(merged)
    prior = t2i_prior(pk, batch=1, seed=8)
    ours = ksampler(pk, with_lora, vae, bundle.glyph, prior, 6, 1.5, seed=2)
    by_hand = ksampler(pk, merged_model, vae, bundle.glyph, prior, 6, 1.5, seed=2)
    plain = ksampler(pk, model, vae, bundle.glyph, prior, 6, 1.5, seed=2)
    assert (ours - by_hand).abs().max() < 1e-5
    assert (ours - plain).abs().max() > 1e-3  # the LoRA changed the picture


def test_streamed_dit_gives_the_pixels_of_a_full_load(pk, bundle, native):
    sampling = pk("glmimage_comfy.decode_node")
    model, _ = native
    prior = i2i_prior(pk, batch=1)
    source = [picture(64, 96)]
    full = sampling.decode_with_comfy(bundle, prior, None, 6, 1.5, 3, source)
    budget = model.model_size() // 5
    streamed = sampling.decode_with_comfy(bundle, prior, None, 6, 1.5, 3, source, max_resident=budget)
    assert model.loaded_size() <= budget < model.model_size()
    assert sum(getattr(m, "comfy_cast_weights", False) for m in bundle.transformer.modules()) > 10
    assert torch.equal(streamed, full)
    pk("glmimage_comfy.native_model").set_vram_limit(model, None)


# --------------------------------------------------------------------------- VAE and previews


def test_comfy_vae_decodes_and_encodes_like_diffusers_and_tiles_with_comfyuis_tiler(pk, bundle, native):
    _, vae = native
    g = torch.Generator().manual_seed(4)
    latents = torch.randn(1, 4, 24, 20, generator=g)  # model space, 192x160 px
    core = pk("glmimage_core.dit_sampling").decode_latents(bundle.vae_model, latents, tiled=False)
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


def test_preview_factors_are_a_least_squares_fit_made_once_from_the_vae(pk, bundle, native):
    vae_mod = pk("glmimage_comfy.vae")
    # the fit recovers a known affine map exactly
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=g)
    truth, bias = torch.randn(4, 3, generator=g), torch.randn(3, generator=g)
    colours = (latents.permute(0, 2, 3, 1) @ truth + bias).permute(0, 3, 1, 2)
    factors, fitted_bias = vae_mod.fit_rgb_factors(latents, colours)
    torch.testing.assert_close(torch.tensor(factors), truth, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(fitted_bias), bias, atol=1e-4, rtol=0)
    # the MODEL's latent format fits them from the decoder's VAE the first time a previewer asks, then keeps them
    model, _ = native
    fmt = model.model.latent_format
    first = fmt.latent_rgb_factors
    assert len(first) == 4 and len(first[0]) == 3 and len(fmt.latent_rgb_factors_bias) == 3
    assert fmt.latent_rgb_factors is first and first == vae_mod.preview_factors(bundle.vae_model)[0]


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_name_what_is_wrong(pk, bundle, native):
    import comfy.sample

    errors = pk("glmimage_core.errors")
    cond_mod = pk("glmimage_comfy.conditioning")
    model, vae = native
    with pytest.raises(errors.GlmImageInputError, match="codebook of 32 ids but the decoder .* knows 64"):
        cond_mod.build_conditioning(model, bundle.glyph, t2i_prior(pk, codebook=32))
    with pytest.raises(errors.GlmImageInputError, match="source images: 0 given, but the prior tokens were made"):
        cond_mod.build_conditioning(model, bundle.glyph, i2i_prior(pk), None, vae, None)
    with pytest.raises(errors.GlmImageInputError, match="vae: image-to-image tokens need the VAE"):
        cond_mod.build_conditioning(model, bundle.glyph, i2i_prior(pk), None, None, [picture(64, 96)])
    cond = cond_mod.build_conditioning(model, bundle.glyph, t2i_prior(pk, batch=1))
    wrong = torch.zeros(1, 4, 24, 24)  # a 192x192 latent for 96x128 tokens
    with pytest.raises(errors.GlmImageInputError, match="latent: the sampler's latent is 192x192 px"):
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
    decoding = pk("glmimage_core.dit_sampling")
    prior = t2i_prior(pk) if mode == "t2i" else i2i_prior(pk)
    sources = [picture(64, 96)] if mode == "i2i" else None
    batched = decoding.decode_prior(bundle, prior, steps=6, guidance=1.5, seed=2, source_images=sources,
                                    guidance_batching="batched")
    sequential = decoding.decode_prior(bundle, prior, steps=6, guidance=1.5, seed=2, source_images=sources,
                                       guidance_batching="sequential")
    assert (batched - sequential).abs().max() < 1e-5
