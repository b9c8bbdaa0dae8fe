"""The diffusion decoder against diffusers' own `GlmImagePipeline`, on tiny random parts built offline.

The reference pipeline is loaded with `GlmImagePipeline.from_pretrained` from
the same tiny hub-layout folder our loader reads, so the test also proves
that folder is a valid hub layout. Outputs must match to float tolerance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glmimage_core.memory import host as runtime
from glmimage_core.dit.loading import cached_decoders, clear_decoder_cache, load_decoder
from glmimage_core.dit.sampling import decode_prior, get_glyph_texts
from glmimage_core.demo.decoder import build_tiny_decoder, build_tiny_full_hub_layout
from glmimage_core.demo.models import TINY_CODEBOOK
from glmimage_core.errors import GlmImageInputError
from glmimage_core.payloads import PriorTokens

ATOL = 1e-4
PROMPT = 'A shop sign that says "OPEN" and \u201ctiny\u201d in red'  # two glyph texts: diffusers' even-count pad


@pytest.fixture(scope="session")
def dec_root(tmp_path_factory) -> Path:
    return build_tiny_full_hub_layout(tmp_path_factory.mktemp("decoder") / "tiny-glm-image")


@pytest.fixture(scope="session")
def dec_bundle(dec_root):
    return load_decoder(str(dec_root), dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def dec_pipe(dec_root):
    from diffusers import GlmImagePipeline

    pipe = GlmImagePipeline.from_pretrained(dec_root, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def dec_copy(dec_root, tmp_path) -> Path:
    """A throw-away copy of the decoder folder for tests that break it."""
    out = tmp_path / "broken"
    shutil.copytree(dec_root, out, ignore=shutil.ignore_patterns("vision_language_encoder", "processor"))
    return out


def t2i_prior(batch: int = 1, h: int = 4, w: int = 3, seed: int = 0, prompt: str = PROMPT) -> PriorTokens:
    grids = torch.randint(0, TINY_CODEBOOK, (batch, h, w), generator=torch.Generator().manual_seed(seed))
    return PriorTokens(grids=grids, mode="t2i", prompt=prompt, codebook_size=TINY_CODEBOOK)


def i2i_prior(source_hw=(2, 3), h: int = 4, w: int = 3, seed: int = 1) -> PriorTokens:
    gen = torch.Generator().manual_seed(seed)
    grids = torch.randint(0, TINY_CODEBOOK, (1, h, w), generator=gen)
    source = torch.randint(0, TINY_CODEBOOK, source_hw, generator=gen)
    return PriorTokens(grids=grids, mode="i2i", prompt="make it 'blue'", codebook_size=TINY_CODEBOOK,
                       source_grids=[source])


def source_picture(height: int, width: int, seed: int = 3) -> torch.Tensor:
    """[1,H,W,3] pixels on the 1/255 grid, so a PIL copy for diffusers holds exactly the same values."""
    rand = torch.rand((1, height, width, 3), generator=torch.Generator().manual_seed(seed))
    return (rand * 255).round() / 255


def reference(pipe, prior: PriorTokens, steps: int, guidance: float, seed: int, **extra) -> np.ndarray:
    prompt = prior.prompt if prior.batch_size == 1 else [prior.prompt] * prior.batch_size
    return pipe(prompt=prompt, height=prior.height, width=prior.width, prior_token_ids=prior.d16(),
                num_inference_steps=steps, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(seed), output_type="np", **extra).images


# --------------------------------------------------------------------------- equality with diffusers


@pytest.mark.parametrize("prompt", [PROMPT, "no glyph text at all", "'one' quoted"])
def test_t2i_matches_diffusers(dec_bundle, dec_pipe, prompt):
    prior = t2i_prior(prompt=prompt)
    ours = decode_prior(dec_bundle, prior, steps=3, guidance=1.5, seed=7)
    ref = reference(dec_pipe, prior, steps=3, guidance=1.5, seed=7)
    assert ours.shape == (1, 128, 96, 3) and ours.dtype == torch.float32 and ours.device.type == "cpu"
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)


def test_t2i_batch_matches_diffusers(dec_bundle, dec_pipe):
    prior = t2i_prior(batch=2, h=2, w=4, seed=5)
    ours = decode_prior(dec_bundle, prior, steps=3, guidance=1.5, seed=11)
    ref = reference(dec_pipe, prior, steps=3, guidance=1.5, seed=11)
    assert ours.shape == (2, 64, 128, 3)
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # two noises, two token grids


def test_no_cfg_matches_diffusers(dec_bundle, dec_pipe):
    prior = t2i_prior(seed=2)
    ours = decode_prior(dec_bundle, prior, steps=3, guidance=1.0, seed=3)
    ref = reference(dec_pipe, prior, steps=3, guidance=1.0, seed=3)
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)
    with_cfg = decode_prior(dec_bundle, prior, steps=3, guidance=4.0, seed=3)
    assert not torch.allclose(ours, with_cfg, atol=1e-3)


def test_i2i_matches_diffusers(dec_bundle, dec_pipe):
    """diffusers' i2i runs when the source tokens are given (its own source tokenization is what crashes)."""
    prior = i2i_prior()
    (sh, sw) = prior.source_grids[0].shape
    picture = source_picture(32 * sh, 32 * sw)
    ours = decode_prior(dec_bundle, prior, steps=3, guidance=1.5, seed=4, source_images=[picture])
    pil = Image.fromarray((picture[0].numpy() * 255).round().astype(np.uint8))
    ref = reference(dec_pipe, prior, steps=3, guidance=1.5, seed=4, image=[pil],
                    prior_token_image_ids=[torch.cat(prior.source_d16())],
                    source_image_grid_thw=[torch.tensor([[1, 2 * sh, 2 * sw]])])
    np.testing.assert_allclose(ours.numpy(), ref, atol=ATOL, rtol=0)

    # The source image really conditions the result (through the KV cache).
    as_t2i = PriorTokens(grids=prior.grids, mode="t2i", prompt=prior.prompt, codebook_size=TINY_CODEBOOK)
    assert not torch.allclose(ours, decode_prior(dec_bundle, as_t2i, steps=3, guidance=1.5, seed=4), atol=1e-4)
    other = decode_prior(dec_bundle, prior, steps=3, guidance=1.5, seed=4,
                         source_images=[source_picture(32 * sh, 32 * sw, seed=9)])
    assert not torch.allclose(ours, other, atol=1e-4)


def test_i2i_resizes_sources_of_any_size(dec_bundle):
    prior = i2i_prior(source_hw=(3, 2))
    odd = torch.rand(50, 37, 4)  # [H,W,C], RGBA, not a multiple of 32
    out = decode_prior(dec_bundle, prior, steps=2, seed=0, source_images=odd)
    assert out.shape == (1, 128, 96, 3) and torch.isfinite(out).all()
    gray = decode_prior(dec_bundle, prior, steps=2, seed=0, source_images=[torch.rand(1, 70, 40, 1)])
    assert gray.shape == out.shape


def test_i2i_batch_shares_sources(dec_bundle):
    prior = i2i_prior()
    prior.grids = torch.cat([prior.grids, prior.grids.flip(-1)])
    picture = source_picture(64, 96)
    out = decode_prior(dec_bundle, prior, steps=2, seed=1, source_images=[picture])
    assert out.shape == (2, 128, 96, 3)


def test_deterministic_and_seeded(dec_bundle):
    prior = t2i_prior()
    first = decode_prior(dec_bundle, prior, steps=2, seed=123)
    assert torch.equal(first, decode_prior(dec_bundle, prior, steps=2, seed=123))
    assert not torch.allclose(first, decode_prior(dec_bundle, prior, steps=2, seed=124), atol=1e-3)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0


def test_prompt_override_changes_glyphs(dec_bundle):
    prior = t2i_prior(prompt="a sign")
    plain = decode_prior(dec_bundle, prior, steps=2, seed=0)
    quoted = decode_prior(dec_bundle, prior, prompt='a sign "HELLO"', steps=2, seed=0)
    assert not torch.allclose(plain, quoted, atol=1e-4)
    assert get_glyph_texts('say "hi" and \'yo\' and \u201cz\u201d and \u300c\u5b57\u300d') == ["yo", "z", "hi", "\u5b57"]


def test_bf16_bundle_decodes(dec_root):
    bundle = load_decoder(str(dec_root), dtype="bf16", device="cpu")
    try:
        assert bundle.transformer.dtype == torch.bfloat16 and bundle.vae_dtype == torch.bfloat16
        out = decode_prior(bundle, t2i_prior(), steps=2, seed=0)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    finally:
        clear_decoder_cache()


# --------------------------------------------------------------------------- progress and cancel


class Counter:
    def __init__(self):
        self.updates = 0

    def update(self, n: int = 1):
        self.updates += n


@pytest.mark.parametrize("guidance", [1.5, 1.0])
def test_progress_gets_one_update_per_step(dec_bundle, guidance):
    progress = Counter()
    decode_prior(dec_bundle, t2i_prior(), steps=4, guidance=guidance, progress=progress)
    assert progress.updates == 4


def test_interrupt_stops_and_releases_the_bundle(dec_bundle, monkeypatch):
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("cancelled")

    monkeypatch.setattr(runtime, "check_interrupted", interrupt)
    progress = Counter()
    with pytest.raises(KeyboardInterrupt):
        decode_prior(dec_bundle, t2i_prior(), steps=5, progress=progress)
    assert progress.updates == 1
    assert not dec_bundle.lock.locked()


# --------------------------------------------------------------------------- input errors


def test_codebook_mismatch_names_both_sizes(dec_bundle):
    prior = t2i_prior()
    prior.codebook_size = 16384
    with pytest.raises(GlmImageInputError, match=r"16384.*64"):
        decode_prior(dec_bundle, prior, steps=1)


@pytest.mark.parametrize("bad", [TINY_CODEBOOK, TINY_CODEBOOK + 1, -1])
def test_out_of_range_id(dec_bundle, bad):
    prior = t2i_prior()
    prior.grids[0, 1, 2] = bad
    with pytest.raises(GlmImageInputError, match=rf"prior tokens hold id {bad}.*0\.\.63"):
        decode_prior(dec_bundle, prior, steps=1)


def test_out_of_range_source_id(dec_bundle):
    prior = i2i_prior()
    prior.source_grids[0][0, 0] = TINY_CODEBOOK + 2
    with pytest.raises(GlmImageInputError, match="source grid 1 hold id 66"):
        decode_prior(dec_bundle, prior, steps=1, source_images=[source_picture(64, 96)])


@pytest.mark.parametrize("grids, message", [
    (torch.zeros((1, 0, 3), dtype=torch.long), "empty"),
    (torch.zeros((4, 3), dtype=torch.long), r"shape \(4, 3\)"),
    (torch.zeros((1, 4, 3)), "float32"),
])
def test_bad_grids(dec_bundle, grids, message):
    prior = PriorTokens(grids=grids, mode="t2i", prompt="", codebook_size=TINY_CODEBOOK)
    with pytest.raises(GlmImageInputError, match=rf"prior tokens' grids.*{message}"):
        decode_prior(dec_bundle, prior, steps=1)


def test_zero_size_source_image(dec_bundle):
    with pytest.raises(GlmImageInputError, match="source image 1 is empty"):
        decode_prior(dec_bundle, i2i_prior(), steps=1, source_images=[torch.zeros((1, 0, 0, 3))])


@pytest.mark.parametrize("count", [0, 2])
def test_wrong_number_of_source_images(dec_bundle, count):
    images = [source_picture(64, 96)] * count
    with pytest.raises(GlmImageInputError, match=rf"source images: {count} given.*from 1 source"):
        decode_prior(dec_bundle, i2i_prior(), steps=1, source_images=images or None)


def test_source_images_for_t2i_tokens(dec_bundle):
    with pytest.raises(GlmImageInputError, match="text-to-image"):
        decode_prior(dec_bundle, t2i_prior(), steps=1, source_images=[source_picture(64, 96)])


@pytest.mark.parametrize("steps, guidance, name", [(0, 1.5, "steps"), (1001, 1.5, "steps"), (2.5, 1.5, "steps"),
                                                   (2, float("nan"), "guidance"), (2, -1.0, "guidance")])
def test_bad_settings(dec_bundle, steps, guidance, name):
    with pytest.raises(GlmImageInputError, match=name):
        decode_prior(dec_bundle, t2i_prior(), steps=steps, guidance=guidance)


def test_decoder_whose_patch_does_not_cover_16px(tmp_path):
    """A DiT with patch 1 (8 px per patch) cannot line d16 tokens up with its patches."""
    root = build_tiny_decoder(tmp_path / "patch1", patch_size=1)
    bundle = load_decoder(str(root), dtype="fp32", device="cpu")
    try:
        with pytest.raises(GlmImageInputError, match=r"8 px per DiT patch.*need 16"):
            decode_prior(bundle, t2i_prior(), steps=1)
    finally:
        clear_decoder_cache()


@pytest.mark.parametrize("component", ["vae", "transformer", "text_encoder", "tokenizer", "scheduler"])
def test_missing_component_folder(dec_copy, component):
    shutil.rmtree(dec_copy / component)
    with pytest.raises(GlmImageInputError, match=rf"decoder folder .*broken.* has no '{component}/'"):
        load_decoder(str(dec_copy), device="cpu")


def test_truncated_safetensors(dec_copy):
    weights = dec_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(GlmImageInputError, match=r"transformer weights .*diffusion_pytorch_model\.safetensors.* "
                                                 r"corrupted or incomplete"):
        load_decoder(str(dec_copy), device="cpu")


def test_garbled_safetensors_header(dec_copy):
    weights = dec_copy / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json at!"
    weights.write_bytes(bytes(data))
    with pytest.raises(GlmImageInputError, match=r"vae weights .* corrupted"):
        load_decoder(str(dec_copy), device="cpu")


def test_no_safetensors_only_pickles(dec_copy):
    weights = dec_copy / "text_encoder" / "model.safetensors"
    weights.rename(weights.with_name("pytorch_model.bin"))
    with pytest.raises(GlmImageInputError, match=r"text_encoder folder .* no \.safetensors"):
        load_decoder(str(dec_copy), device="cpu")


def test_missing_and_file_paths(tmp_path):
    with pytest.raises(GlmImageInputError, match="does not exist"):
        load_decoder(str(tmp_path / "nope"), device="cpu")
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(GlmImageInputError, match="is a file"):
        load_decoder(str(tmp_path / "file.safetensors"), device="cpu")
    root = build_tiny_decoder(tmp_path / "dtype")
    with pytest.raises(GlmImageInputError, match="dtype 'fp8' is not one of"):
        load_decoder(str(root), dtype="fp8", device="cpu")

# --------------------------------------------------------------------------- loader cache and layouts


def test_cache_returns_same_bundle_and_keeps_one_per_path(tmp_path):
    root = build_tiny_decoder(tmp_path / "cache")
    clear_decoder_cache()
    try:
        first = load_decoder(str(root), dtype="fp32", device="cpu")
        assert load_decoder(str(root), dtype="fp32", device="cpu") is first
        assert load_decoder(str(root), dtype="auto", device="cpu") is first  # tiny checkpoint is fp32
        assert load_decoder(str(tmp_path / "cache" / ".." / "cache"), dtype="fp32", device="cpu") is first
        second = load_decoder(str(root), dtype="bf16", device="cpu")
        assert second is not first and second.dtype == torch.bfloat16
        assert [b for b in cached_decoders() if b.path == first.path] == [second]
        assert load_decoder(str(root), dtype="fp32", device="cpu") is not first
        assert len([b for b in cached_decoders() if b.path == first.path]) == 1
    finally:
        clear_decoder_cache()


def test_components_from_separate_folders(tmp_path, dec_root):
    """Each part may come from its own folder, with or without a hub-layout root."""
    root = build_tiny_decoder(tmp_path / "parts")
    folders = {name: str(root / name) for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")}
    try:
        bundle = load_decoder(dtype="fp32", device="cpu", **folders)
        assert bundle.codebook_size == TINY_CODEBOOK
        assert load_decoder(folders, dtype="fp32", device="cpu") is bundle
        mixed = load_decoder(str(dec_root), dtype="fp32", device="cpu", vae=folders["vae"])
        assert mixed.vae is bundle.vae  # one copy per component folder, shared by the bundles using it
        assert mixed.transformer is not bundle.transformer
        out = decode_prior(mixed, t2i_prior(), steps=1)
        assert out.shape == (1, 128, 96, 3)
        with pytest.raises(GlmImageInputError, match="unknown decoder component"):
            load_decoder({"unet": folders["vae"]}, device="cpu")
    finally:
        clear_decoder_cache()


def test_mismatched_components_are_named(tmp_path):
    from diffusers import GlmImageTransformer2DModel

    root = build_tiny_decoder(tmp_path / "mismatch")
    GlmImageTransformer2DModel(patch_size=2, in_channels=8, out_channels=8, num_layers=1, attention_head_dim=8,
                               num_attention_heads=2, text_embed_dim=32, time_embed_dim=16, condition_dim=8,
                               prior_vq_quantizer_codebook_size=TINY_CODEBOOK).save_pretrained(root / "transformer")
    with pytest.raises(GlmImageInputError, match=r"transformer .* takes 8 latent channels but vae .* makes 16"):
        load_decoder(str(root), device="cpu")
