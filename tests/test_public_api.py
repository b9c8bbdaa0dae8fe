"""The engine's public API (issue 17): scripts and the command line use these names from the package root, and
they stay when modules move. Each is imported from the root here, and the whole pipeline runs through them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glmimage_core

REPO = Path(__file__).resolve().parents[1]
PUBLIC = ["load_ar_model", "prepare_inputs", "generate_tokens", "extract_prior", "load_decoder", "decode",
          "save_prior", "load_prior", "render_grid", "GridShape", "PriorTokens", "GeneratedTokens",
          "GlmImageInputError"]


def test_every_entry_point_imports_from_the_root_with_a_docstring():
    assert sorted(glmimage_core.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        value = getattr(glmimage_core, name)
        assert callable(value), name
        assert (value.__doc__ or "").strip(), f"{name} has no docstring"
        assert name in (glmimage_core.__doc__ or ""), f"the package docstring does not describe {name}"
    with pytest.raises(AttributeError):
        glmimage_core.no_such_entry_point  # noqa: B018


def test_import_glmimage_core_stays_cheap():
    """`import glmimage_core` loads no model library: names resolve on first use."""
    code = ("import sys, glmimage_core; heavy = [m for m in ('transformers', 'diffusers', 'torch') if m in sys.modules];"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_text_to_image_and_back_through_the_public_names(tmp_path):
    """Non-square, two pictures with distinct seeds, a token-file roundtrip and the decoder: root names only."""
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout

    from glmimage_core import (GridShape, decode, extract_prior, generate_tokens, load_ar_model, load_decoder,
                               load_prior, prepare_inputs, render_grid, save_prior)

    folder = build_tiny_full_hub_layout(tmp_path / "tiny")
    ar = load_ar_model(str(folder), dtype="fp32", device="cpu")
    inputs = prepare_inputs(ar.processor, 'a sign that says "GLM"', shape=GridShape.from_pixels(width=128, height=96))
    tokens = generate_tokens(ar, inputs, seed=3, images=2)
    prior = extract_prior(tokens)
    assert tuple(prior.grids.shape) == (2, 3, 4)
    assert not torch.equal(prior.grids[0], prior.grids[1]), "two seeds gave the same grid"
    again = load_prior(save_prior(prior, tmp_path / "t.safetensors"))
    assert torch.equal(again.grids, prior.grids)
    assert render_grid(prior.grids, prior.codebook_size).shape[0] == 2
    decoder = load_decoder(str(folder), dtype="fp32", device="cpu")
    pixels = decode(decoder, again, steps=2, seed=1)
    assert tuple(pixels.shape) == (2, 96, 128, 3)
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0 and float(pixels.std()) > 0.01
