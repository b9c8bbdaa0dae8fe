"""The pack's CUDA paths, with the tiny random models, inside ComfyUI's model manager as the nodes run them.

Marked `cuda`: without a CUDA GPU they skip, saying so. scripts/gpu_check.sh runs them on the device machine
(GLMIMAGE_COMFY_DEVICE=gpu: the in-process ComfyUI picks the GPU). Each one mirrors a CPU test (named in its
docstring) on the GPU: what differs there is real (cuBLAS/cuDNN kernels, bf16/fp16/fp8 storage, CUDA graphs,
transfers of the RAM-held embedding table and of streamed layers), so only a GPU can show it.

GLMIMAGE_CUDA_TESTS_ON_CPU=1 runs them on the CPU instead (the GPU check's dry run: the test code itself is
exercised here, so a typo does not cost a device call); the few asserts that only hold on CUDA say so.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import threading

import pytest
import torch

from glmimage_core.demo.decoder import random_lora
from tests.cuda_marks import CUDA_ONLY, DEVICE

pytestmark = CUDA_ONLY
PROMPT = 'A shop sign that says "OPEN"'


@pytest.fixture(scope="module")
def pk(comfy_pack):
    """The pack's modules as ComfyUI imports them; ComfyUI's device must be the one these tests are for."""
    mm = importlib.import_module("comfy.model_management")
    if mm.get_torch_device().type != DEVICE:
        pytest.fail(f"ComfyUI picked {mm.get_torch_device()} but these tests are for {DEVICE}: set "
                    f"GLMIMAGE_COMFY_DEVICE={'gpu' if DEVICE == 'cuda' else 'cpu'}", pytrace=False)

    def module(name: str):
        return importlib.import_module(f"{comfy_pack.__name__}.{name}")
    module("glmimage_comfy.lora_keys").install()
    return module


@pytest.fixture(scope="module")
def root(pk, tmp_path_factory):
    return pk("glmimage_core.demo.decoder").build_tiny_full_hub_layout(tmp_path_factory.mktemp("cuda") / "glm")


def load_ar(pk, root, dtype="fp32", **kw):
    return pk("glmimage_core.ar.loading").load_ar_model(str(root), dtype=dtype, device="gpu", **kw)


def load_dec(pk, root, dtype="fp32", **kw):
    return pk("glmimage_core.dit.loading").load_decoder(str(root), dtype=dtype, device="gpu", **kw)


def tokens(pk, ar, prompt="a red fox <sop>4 5<eop>", seed=11, images=None, **kw):
    inputs = pk("glmimage_core.ar.chat_prompt").prepare_inputs(ar.processor, prompt, images=images)
    return pk("glmimage_core.ar.generation").generate_tokens(ar, inputs, seed=seed, **kw)


def in_codebook(ar, sequences: torch.Tensor, prompt_len: int) -> bool:
    new = sequences[:, prompt_len:]
    image = new[(new != ar.image_end_id) & (new < ar.codebook_size)]
    return image.numel() > 0


def streamed(model: torch.nn.Module) -> int:
    return sum(1 for m in model.modules() if getattr(m, "comfy_cast_weights", False))


def t2i_prior(pk, batch=1, h=4, w=3, seed=0, codebook=64):
    grids = torch.randint(0, codebook, (batch, h, w), generator=torch.Generator().manual_seed(seed))
    return pk("glmimage_core.payloads").PriorTokens(grids=grids, mode="t2i", prompt=PROMPT, codebook_size=codebook)


def picture(h, w, seed=3):
    return torch.randint(0, 256, (h, w, 3), generator=torch.Generator().manual_seed(seed)).float() / 255


# --------------------------------------------------------------------------- AR model


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_ar_runs_on_the_gpu_with_its_embedding_table_in_ram(pk, root, dtype):
    """test_vram.py's cast-layer/HostEmbedding test, on the GPU: the text embedding table stays in RAM and
    feeds a model whose layers are on the GPU; same seed, same tokens; the tokens are image tokens."""
    ar = load_ar(pk, root, dtype)
    HostEmbedding = pk("glmimage_core.weights.cast_layers").HostEmbedding
    embed = ar.model.model.language_model.embed_tokens
    assert isinstance(embed, HostEmbedding)
    assert all(p.device.type == "cpu" for p in embed.parameters()) or not list(embed.parameters())
    assert ar.model.lm_head.weight.device.type == DEVICE
    first, again = tokens(pk, ar), tokens(pk, ar)
    assert torch.equal(first.sequences, again.sequences)
    assert first.sequences.shape[0] == 1 and first.sequences.shape[1] > 20
    other = tokens(pk, ar, seed=12)
    assert not torch.equal(other.sequences, first.sequences)


def test_fp8_ar_stores_fp8_on_the_gpu_and_comfyui_counts_its_bytes(pk, root):
    """test_vram.py's accounting test with weight_dtype fp8_e4m3fn, on the GPU (ComfyUI's cast layers
    upcast per layer; this is the path a 16 GB card runs)."""
    memory, vram_plan = pk("glmimage_core.memory.comfy_memory"), pk("glmimage_core.memory.vram_plan")
    ar = load_ar(pk, root, "bf16", weight_dtype="fp8_e4m3fn")
    result = tokens(pk, ar)
    patcher = memory.patcher_of(ar)
    reported = vram_plan.resident_bytes(ar.inventory, vram_plan.WeightOption("fp8_e4m3fn"))
    assert patcher.model_size() == reported == patcher.loaded_size()
    down = ar.model.model.language_model.layers[0].mlp.down_proj.weight
    assert down.dtype == torch.float8_e4m3fn and down.device.type == DEVICE
    assert result.sequences.shape[1] > 20


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_bitsandbytes_quantized_ar_runs_on_the_gpu(pk, root, quantization):
    """quantization=nf4/int8 (the 8 GB card's AR option) loads and samples; needs bitsandbytes."""
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip(f"quantization={quantization} needs bitsandbytes, which this Python lacks (the device image "
                    "has none, and its CUDA wheel does not fit beside the bundle in what a device call carries)")
    if DEVICE != "cuda":
        pytest.skip("bitsandbytes quantization runs on CUDA only")
    ar = load_ar(pk, root, "bf16", quantization=quantization)
    first, again = tokens(pk, ar), tokens(pk, ar)
    assert torch.equal(first.sequences, again.sequences)


def test_image_to_image_on_the_gpu_gives_source_grids_and_is_seeded(pk, root):
    """test_generation.py's i2i test on the GPU: the vision tower + VQ encode the source there."""
    ar = load_ar(pk, root)
    source = [picture(64, 96)]
    first = tokens(pk, ar, "make it blue", seed=2, images=source)
    again = tokens(pk, ar, "make it blue", seed=2, images=source)
    assert torch.equal(first.sequences, again.sequences)
    assert len(first.source_grids) == 1 and first.source_grids[0].numel() > 0
    assert torch.equal(first.source_grids[0], again.source_grids[0])
    assert int(first.source_grids[0].max()) < ar.codebook_size


def test_compiled_gives_the_standard_tokens_in_fp32(pk, root):
    """test_speed_memory.py's compiled test: torch.compile + CUDA graphs, the same tokens as standard in
    fp32, and the second run of a shape reuses the compiled step (no note, no fallback)."""
    ar = load_ar(pk, root)
    standard = tokens(pk, ar, "a boat <sop>4 4<eop>", seed=3)
    for _ in range(2):
        compiled = tokens(pk, ar, "a boat <sop>4 4<eop>", seed=3, speed="compiled")
        if DEVICE == "cuda":
            assert compiled.notes == []
        assert torch.equal(compiled.sequences, standard.sequences)


def test_batch_of_4_equals_four_single_runs(pk, root):
    """test_batching.py on the GPU: picture i of a batch is what a single run with seed + i gives."""
    ar = load_ar(pk, root)
    inputs = pk("glmimage_core.ar.chat_prompt").prepare_inputs(ar.processor, "a red fox <sop>4 5<eop>")
    generate = pk("glmimage_core.ar.generation").generate_tokens
    batch = generate(ar, inputs, seed=5, images=4)
    for i in (0, 3):
        single = generate(ar, inputs, seed=5 + i)
        n = single.sequences.shape[1]
        assert torch.equal(batch.sequences[i, :n], single.sequences[0]), i


def test_partial_load_on_the_gpu_gives_the_tokens_of_a_full_load(pk, root):
    """test_vram.py's partial-load test on the GPU: a budget a quarter of the model; ComfyUI streams the
    rest from RAM per forward (real host-to-device copies here), same tokens, t2i and i2i."""
    memory = pk("glmimage_core.memory.comfy_memory")
    ar = load_ar(pk, root)
    full = tokens(pk, ar)
    patcher = memory.patcher_of(ar)
    budget = patcher.model_size() // 4
    partial = tokens(pk, ar, vram_limit=budget)
    assert patcher.loaded_size() <= budget < patcher.model_size()
    assert streamed(ar.model) > 10
    assert torch.equal(partial.sequences, full.sequences)
    source = [picture(64, 96)]
    s = tokens(pk, ar, "make it blue", seed=2, images=source, vram_limit=budget)
    f = tokens(pk, ar, "make it blue", seed=2, images=source)
    assert torch.equal(s.sequences, f.sequences) and torch.equal(s.source_grids[0], f.source_grids[0])


# --------------------------------------------------------------------------- decoder


@pytest.fixture(scope="module")
def bundle(pk, root):
    return load_dec(pk, root)


@pytest.fixture(scope="module")
def native(pk, bundle):
    nm, vae = pk("glmimage_comfy.native_patcher"), pk("glmimage_comfy.vae")
    return nm.native_model(bundle.dit, lambda: vae.preview_factors(bundle.vae_model)), vae.comfy_vae(bundle.vae_model)


def test_decode_on_the_gpu_matches_diffusers(pk, root, bundle):
    """test_decoding.py's diffusers equality, both on the GPU in fp32 (tolerance 2e-3: cuDNN convolutions
    and TF32-free GEMMs still differ from the CPU's in the last bits, the two pipelines share them)."""
    from diffusers import GlmImagePipeline

    pipe = GlmImagePipeline.from_pretrained(root, torch_dtype=torch.float32, local_files_only=True).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    prior = t2i_prior(pk)
    ours = pk("glmimage_core.dit.sampling").decode_prior(bundle, prior, steps=3, guidance=1.5, seed=7)
    ref = pipe(prompt=prior.prompt, height=prior.height, width=prior.width, prior_token_ids=prior.d16().to(DEVICE),
               num_inference_steps=3, guidance_scale=1.5, generator=torch.Generator().manual_seed(7),
               output_type="pt").images.permute(0, 2, 3, 1).cpu()
    assert ours.shape == ref.shape == (1, 128, 96, 3)
    assert (ours - ref).abs().max() < 2e-3


@pytest.mark.parametrize("dtype, weight_dtype", [("bf16", "default"), ("fp16", "default"), ("bf16", "fp8_e4m3fn")])
def test_decoder_in_each_storage_dtype_renders_finite_pixels(pk, root, dtype, weight_dtype):
    """test_decoding.py's bf16 test, per storage dtype on the GPU (fp8: ComfyUI's cast layers)."""
    dec = load_dec(pk, root, dtype, weight_dtype=weight_dtype)
    image = pk("glmimage_core.dit.sampling").decode_prior(dec, t2i_prior(pk), steps=3, guidance=1.5, seed=1)
    assert image.shape == (1, 128, 96, 3) and torch.isfinite(image).all()
    assert 0 <= float(image.min()) and float(image.max()) <= 1 and float(image.std()) > 0.01
    if weight_dtype != "default":
        assert any(p.dtype == torch.float8_e4m3fn for p in dec.transformer.parameters())


@pytest.mark.parametrize("mode", ["t2i", "i2i"])
def test_batched_guidance_gives_the_sequential_pixels(pk, bundle, mode):
    """test_native.py's batched-guidance test on the GPU (tolerance 1e-4: GEMMs of another batch size)."""
    decoding = pk("glmimage_core.dit.sampling")
    prior = t2i_prior(pk, batch=2)
    sources = None
    if mode == "i2i":
        source = torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(2))
        prior = pk("glmimage_core.payloads").PriorTokens(grids=prior.grids, mode="i2i", prompt='make "it" red',
                                                      codebook_size=64, source_grids=[source])
        sources = [picture(64, 96)]
    runs = {b: decoding.decode_prior(bundle, prior, steps=4, guidance=1.5, seed=2, source_images=sources,
                                     guidance_batching=b) for b in ("batched", "sequential")}
    assert (runs["batched"] - runs["sequential"]).abs().max() < 1e-4


def test_lora_through_comfyuis_loader_on_the_gpu_equals_the_weights_merged_by_hand(pk, bundle, native, tmp_path):
    """test_native.py's LoRA test on the GPU (ComfyUI patches the weights on the device)."""
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
    with_lora, _ = comfy.sd.load_lora_for_models(model, None, loaded, strength, 0)
    merged = dataclasses.replace(bundle.dit, transformer=copy.deepcopy(bundle.transformer), lock=threading.Lock())
    for name in targets:
        layer = merged.transformer.get_submodule(name)
        delta = lora[f"transformer.{name}.lora_B.weight"] @ lora[f"transformer.{name}.lora_A.weight"]
        layer.weight.data += strength * delta.to(layer.weight.device)
    merged_model = pk("glmimage_comfy.native_patcher").native_model(merged)
    prior = t2i_prior(pk, seed=8)

    def run(m):
        import comfy.sample

        cond = pk("glmimage_comfy.token_conditioning").build_conditioning(m, bundle.glyph, prior, None, vae, None)
        latent = cond.latent["samples"]
        noise = comfy.sample.prepare_noise(latent, 2)
        samples = comfy.sample.sample(cond.model, noise, 6, 1.5, "euler", "simple", cond.positive, cond.negative,
                                      latent, seed=2, disable_pbar=True)
        return vae.decode(samples)

    ours, by_hand, plain = run(with_lora), run(merged_model), run(model)
    assert (ours - by_hand).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-3


def test_streamed_dit_on_the_gpu_gives_the_pixels_of_a_full_load(pk, bundle, native):
    """test_native.py's streamed-DiT test on the GPU: a budget a fifth of the DiT, real copies per layer."""
    sampling = pk("glmimage_comfy.decoder_sampling")
    model, _ = native
    prior = t2i_prior(pk, seed=4)
    full = sampling.decode_with_comfy(bundle, prior, None, 4, 1.5, 3)
    budget = model.model_size() // 5
    part = sampling.decode_with_comfy(bundle, prior, None, 4, 1.5, 3, max_resident=budget)
    assert model.loaded_size() <= budget < model.model_size()
    assert streamed(bundle.transformer) > 10
    assert torch.equal(part, full)


def test_tiled_vae_decode_on_the_gpu(pk, bundle, native):
    """test_native.py's VAE test on the GPU: one tile = the untiled picture; several tiles run."""
    _, vae = native
    latents = torch.randn(1, 16, 24, 20, generator=torch.Generator().manual_seed(4))
    decoding = pk("glmimage_core.dit.sampling")
    core = decoding.decode_latents(bundle.vae_model, latents, tiled=False)
    tiled = decoding.decode_latents(bundle.vae_model, latents, tiled=True)
    assert tiled.shape == core.shape and torch.isfinite(tiled).all()
    raw = bundle.dit.latent_stats.denormalise(latents)
    whole = vae.decode_tiled(raw, tile_x=64, tile_y=64, overlap=8)
    assert (whole - core).abs().max() < 1e-4
    split = vae.decode_tiled(raw, tile_x=16, tile_y=16, overlap=4)
    assert split.shape == core.shape and torch.isfinite(split).all()
