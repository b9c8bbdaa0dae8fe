"""Token colours from the model's own codebook, and the live preview of the grid being filled.

The palette tests use the tiny model's real VQ codebook (and one overwritten with known
clusters); the live-preview tests run generation with ComfyUI's real `ProgressBar` and a
progress hook, in-process, as the server does."""

import hashlib

import numpy as np
import pytest
import torch

from glmimage_core.ar import generation as ar_generate
from glmimage_core.ar.loading import load_ar_model
from glmimage_core.demo.models import TINY_CODEBOOK, build_tiny_ar_model
from glmimage_core.errors import GlmImageInputError
from glmimage_core.tokens.grids import extract_prior
from glmimage_core.ar.generation import generate_tokens
from glmimage_core.ar.chat_prompt import prepare_inputs
from glmimage_core.shapes import GridShape
from glmimage_core.tokens.grid_preview import (INVALID_RGB, UNFILLED_RGB, LiveGridPreview, codebook_embedding,
                                         codebook_palette, hue_palette, model_palette, render_grid)


def _ranks(values: torch.Tensor) -> torch.Tensor:
    return values.argsort().argsort().float()


def _pairwise(x: torch.Tensor) -> torch.Tensor:
    i, j = torch.triu_indices(len(x), len(x), 1)
    return (x[i] - x[j]).norm(dim=-1)


def test_similar_codebook_vectors_get_similar_colours(ar):
    codebook = torch.nn.functional.normalize(codebook_embedding(ar.model).detach().float(), dim=-1)
    colours = model_palette(ar.model, ar.codebook_size)
    assert colours.shape == (TINY_CODEBOOK, 3) and 0.0 <= float(colours.min()) and float(colours.max()) <= 1.0
    # Colour distance follows codebook distance (rank correlation over all pairs); the id-based
    # hue palette has none, which is what this change is for.
    near, far = _pairwise(codebook), _pairwise(colours)
    spearman = torch.corrcoef(torch.stack([_ranks(near), _ranks(far)]))[0, 1]
    hue = torch.corrcoef(torch.stack([_ranks(near), _ranks(_pairwise(hue_palette(TINY_CODEBOOK)))]))[0, 1]
    assert spearman > 0.35 and abs(float(hue)) < 0.15, (float(spearman), float(hue))
    # Each entry's nearest codebook neighbour is much closer in colour than an average pair.
    distances = torch.cdist(codebook, codebook).fill_diagonal_(float("inf"))
    nearest = distances.argmin(dim=1)
    assert (colours - colours[nearest]).norm(dim=1).mean() < 0.75 * far.mean()


def test_codebook_clusters_become_colour_clusters():
    """Four tight clusters of codebook vectors: each cluster one colour, the clusters far apart."""
    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 16, generator=gen)
    labels = torch.arange(TINY_CODEBOOK) % 4
    codebook = centres[labels] + 0.02 * torch.randn(TINY_CODEBOOK, 16, generator=gen)
    colours = codebook_palette(codebook * 7.0)  # the quantizer normalises: the scale must not matter
    same = labels[:, None] == labels[None, :]
    dist = torch.cdist(colours, colours)
    assert dist[same].max() < 0.1 and dist[~same].min() > 0.4, (float(dist[same].max()), float(dist[~same].min()))


def test_palette_is_deterministic_per_model_and_differs_between_models(tmp_path):
    folder = str(build_tiny_ar_model(tmp_path / "same", seed=0))
    first = load_ar_model(folder, dtype="fp32", device="cpu")
    second = load_ar_model(folder, dtype="fp32", device="cpu", attention="eager")  # a new copy, same weights
    assert second.model is not first.model
    a = model_palette(first.model, first.codebook_size)
    assert model_palette(first.model, first.codebook_size) is a  # computed once per loaded model
    assert torch.equal(model_palette(second.model, second.codebook_size), a)
    torch.manual_seed(1234)  # the global RNG plays no part
    assert torch.equal(codebook_palette(codebook_embedding(first.model)), a)
    other = load_ar_model(str(build_tiny_ar_model(tmp_path / "other", seed=7)), dtype="fp32", device="cpu")
    assert (model_palette(other.model, other.codebook_size) - a).abs().mean() > 0.1
    assert model_palette(first.model, first.codebook_size + 1) is None  # wrong codebook size: no palette


def test_render_grid_uses_the_palette_and_checks_it():
    palette = torch.rand(8, 3)
    image = render_grid(torch.tensor([[[0, 7], [3, 3]]]), 8, cell=2, palette=palette)
    assert image.shape == (1, 4, 4, 3)
    assert torch.equal(image[0, 0, 2], palette[7]) and torch.equal(image[0, 3, 3], palette[3])
    assert torch.equal(render_grid(torch.tensor([[[5]]]), 8, cell=1)[0, 0, 0], hue_palette(8)[5])
    with pytest.raises(GlmImageInputError, match=r"palette must be \[8, 3\]"):
        render_grid(torch.tensor([[[0]]]), 8, palette=torch.rand(9, 3))


def test_live_preview_shows_the_grid_being_filled():
    shape = GridShape(3, 5)  # t2i: a 12x20 preview grid first, then 3x5
    palette = torch.rand(TINY_CODEBOOK, 3)
    live = LiveGridPreview(shape, "t2i", TINY_CODEBOOK, palette, max_px=100)
    lut = (palette * 255).round().to(torch.uint8).numpy()
    ids = torch.randint(0, TINY_CODEBOOK, (256,))
    ids[250] = TINY_CODEBOOK + 1  # an id that is no codebook entry

    early = np.asarray(live.render(ids[:7]))
    assert early.shape == (12 * 5, 20 * 5, 3)  # the preview grid, 5 px per token (100 // 20)
    cells = early[2::5, 2::5].reshape(-1, 3)
    assert (cells[:7] == lut[ids[:7].numpy()]).all() and (cells[7:] == UNFILLED_RGB).all()
    full_preview = np.asarray(live.render(ids[:240]))
    assert full_preview.shape == early.shape and not (full_preview == UNFILLED_RGB).all(axis=-1).any()

    large = np.asarray(live.render(ids[:251]))
    assert large.shape == (3 * 20, 5 * 20, 3)  # now the large grid, 20 px per token
    cells = large[10::20, 10::20].reshape(-1, 3)
    assert (cells[:10] == lut[ids[240:250].numpy()]).all()
    assert (cells[10] == INVALID_RGB).all() and (cells[11:] == UNFILLED_RGB).all()

    i2i = LiveGridPreview(shape, "i2i", TINY_CODEBOOK, None, max_px=100)
    assert np.asarray(i2i.render(ids[:1])).shape == (60, 100, 3)  # i2i samples the large grid only


@pytest.fixture()
def recorded(comfy_pack):
    """ComfyUI's real ProgressBar with a global hook that records what the server would send."""
    import time

    import comfy.utils

    calls = []

    def hook(value, total, preview, node_id=None):
        digest = hashlib.sha1(preview[1].tobytes()).hexdigest() if preview is not None else None
        calls.append({"value": value, "total": total, "preview": preview, "digest": digest,
                      "t": time.monotonic()})

    comfy.utils.set_progress_bar_global_hook(hook)
    yield calls
    comfy.utils.set_progress_bar_global_hook(None)


def test_progress_and_previews_are_throttled(ar, recorded):
    inputs = prepare_inputs(ar.processor, "a boat <sop>2 3<eop>")
    total = inputs.shape.max_new_tokens("t2i")
    generate_tokens(ar, inputs, seed=0)
    values = [c["value"] for c in recorded]
    assert values[0] == 1 and values[-1] == total and values == sorted(set(values))
    assert len(values) < total  # not one message per token
    gaps = np.diff([c["t"] for c in recorded[1:-1]])  # between the first and the last report
    assert (gaps >= ar_generate.REPORT_INTERVAL_S * 0.9).all(), gaps
    assert recorded[0]["preview"] is None and all(c["preview"] is not None for c in recorded[1:])


def test_every_report_carries_a_picture_of_the_first_sample(ar, recorded, monkeypatch):
    monkeypatch.setattr(ar_generate, "REPORT_INTERVAL_S", 0.0)  # report (and render) every token
    inputs = prepare_inputs(ar.processor, "a boat <sop>3 5<eop>")
    tokens = generate_tokens(ar, inputs, seed=4, images=2)
    prior = extract_prior(tokens)
    assert tokens.palette is prior.palette is model_palette(ar.model, ar.codebook_size)
    total = inputs.shape.max_new_tokens("t2i")
    assert [c["value"] for c in recorded] == list(range(1, total + 1))
    lut = (prior.palette * 255).round().to(torch.uint8).numpy()
    for call in recorded[1:]:
        kind, image, max_px = call["preview"]
        assert kind == "JPEG" and image.mode == "RGB" and max_px == max(image.size) <= 512
        # nobody changed a picture after handing it over (ComfyUI encodes it later)
        assert hashlib.sha1(image.tobytes()).hexdigest() == call["digest"]
        in_preview_grid = call["value"] <= 12 * 20
        assert image.size == ((500, 300) if in_preview_grid else (510, 306)), (call["value"], image.size)
    last = np.asarray(recorded[-1]["preview"][1])[51::102, 51::102]  # the centre of each token's square
    assert (last == lut[prior.grids[0].numpy()]).all()  # the first picture, in the model's colours
    assert not (last == lut[prior.grids[1].numpy()]).all()


def test_cancel_is_checked_at_every_token_even_between_reports(ar, comfy_pack, monkeypatch):
    import comfy.model_management as mm
    import comfy.ops
    import comfy.utils

    monkeypatch.setattr(ar_generate, "REPORT_INTERVAL_S", 3600.0)  # only the first token is reported
    seen, forwards = [], []

    def press_cancel(value, total, preview, node_id=None):
        seen.append(value)
        mm.interrupt_current_processing(True)

    handle = ar.model.register_forward_hook(lambda *args: forwards.append(1))
    comfy.utils.set_progress_bar_global_hook(press_cancel)
    try:
        inputs = prepare_inputs(ar.processor, "a boat <sop>4 4<eop>")
        with pytest.raises(mm.InterruptProcessingException):
            generate_tokens(ar, inputs, seed=0)
    finally:
        handle.remove()
        comfy.utils.set_progress_bar_global_hook(None)
        mm.interrupt_current_processing(False)
    assert seen == [1]
    # Token 1 (prompt pass), token 2, then the per-token check stops it. A model loaded inside ComfyUI
    # has ComfyUI's cast layers, whose every forward checks cancel too (comfy.ops.run_every_op, 0.3.75 and
    # 0.33): there token 2's forward is cut short and never completes.
    cast = any(isinstance(m, comfy.ops.CastWeightBiasOp) for m in ar.model.modules())
    assert len(forwards) == (1 if cast else 2), (cast, len(forwards))
    assert not ar.lock.locked()  # the model is free again and samples as before
    assert generate_tokens(ar, prepare_inputs(ar.processor, "x <sop>1 1<eop>"), seed=0).sequences.numel() > 0


def test_preview_node_colours_like_the_model_that_sampled_the_tokens(ar, comfy_pack, tmp_path):
    import dataclasses
    import sys

    from glmimage_core.tokens.files import load_prior, save_prior

    node = sys.modules[f"{comfy_pack.__name__}.nodes"].GLMImagePreviewTokens
    tokens = generate_tokens(ar, prepare_inputs(ar.processor, "a boat <sop>3 2<eop>"), seed=2)
    prior = extract_prior(tokens)
    palette = model_palette(ar.model, ar.codebook_size)
    expected = render_grid(prior.grids, prior.codebook_size, cell=2, palette=palette)
    assert torch.equal(node.execute(prior=prior, cell_px=2)[0], expected)

    from_file = load_prior(save_prior(prior, tmp_path / "t.safetensors"))
    assert from_file.palette is None  # files carry no colours ...
    hues = node.execute(prior=from_file, cell_px=2)[0]
    assert torch.equal(hues, render_grid(prior.grids, prior.codebook_size, cell=2))  # ... fixed hues then
    assert torch.equal(node.execute(prior=from_file, cell_px=2, ar_model=ar)[0], expected)  # or the model's

    other = dataclasses.replace(from_file, grids=from_file.grids % 8, codebook_size=8)
    # the node raises the pack package's own GlmImageInputError class, a ValueError
    with pytest.raises(ValueError, match="ar_model has a codebook of 64 ids"):
        node.execute(prior=other, cell_px=2, ar_model=ar)
