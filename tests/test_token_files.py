import json

import pytest
import torch
from safetensors.torch import save_file

from glmimage_core.errors import GlmImageInputError
from glmimage_core.prior import PriorTokens, upsample_d32_to_d16
from glmimage_core.token_files import load_prior, save_prior
from glmimage_core.token_preview import render_grid


def _prior(mode="i2i"):
    grids = torch.randint(0, 64, (2, 3, 4))
    sources = [torch.randint(0, 64, (2, 3))] if mode == "i2i" else []
    return PriorTokens(grids=grids, mode=mode, prompt='say "hi"', codebook_size=64, source_grids=sources,
                       seeds=[1, 2])


def test_roundtrip_keeps_everything(tmp_path):
    prior = _prior()
    loaded = load_prior(save_prior(prior, tmp_path / "t.safetensors"))
    assert torch.equal(loaded.grids, prior.grids) and torch.equal(loaded.source_grids[0], prior.source_grids[0])
    assert (loaded.mode, loaded.prompt, loaded.codebook_size, loaded.seeds) == ("i2i", 'say "hi"', 64, [1, 2])


def test_d16_is_nearest_neighbour_2x_as_diffusers_does():
    grid = torch.tensor([[[1, 2], [3, 4]]])
    assert upsample_d32_to_d16(grid)[0].tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    prior = PriorTokens(grids=grid, mode="t2i", prompt="", codebook_size=8)
    assert prior.d16().shape == (1, 16) and (prior.height, prior.width) == (64, 64)


def test_foreign_and_broken_files_are_reported(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something"})
    with pytest.raises(GlmImageInputError, match="not a GLM-Image token file"):
        load_prior(other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00\x01garbage")
    with pytest.raises(GlmImageInputError, match="not a readable safetensors file"):
        load_prior(broken)
    with pytest.raises(GlmImageInputError, match="not a .safetensors file"):
        load_prior(tmp_path / "tokens.pt")
    with pytest.raises(GlmImageInputError, match="does not exist"):
        load_prior(tmp_path / "missing.safetensors")


def test_metadata_mismatch_and_out_of_range_ids(tmp_path):
    path = save_prior(_prior("t2i"), tmp_path / "t.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, grids = f.metadata(), f.get_tensor("grids")
    save_file({"grids": grids}, str(path), metadata={**meta, "token_h": "5"})
    with pytest.raises(GlmImageInputError, match=r"metadata says 2x5x4"):
        load_prior(path)
    save_file({"grids": grids + 100}, str(path), metadata=meta)
    with pytest.raises(GlmImageInputError, match="ids outside 0..63"):
        load_prior(path)
    save_file({"grids": grids}, str(path), metadata={**meta, "mode": "i2i"})
    with pytest.raises(GlmImageInputError, match="mode 'i2i' does not match its 0 source grid"):
        load_prior(path)
    assert json.loads(meta["seeds"]) == [1, 2]


def test_preview_colours_are_fixed_per_id_and_sized_by_cell():
    grids = torch.tensor([[[0, 1], [1, 0]]])
    image = render_grid(grids, 64, cell=4)
    assert image.shape == (1, 8, 8, 3) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert torch.equal(image[0, 0, 0], image[0, 4, 4]) and not torch.equal(image[0, 0, 0], image[0, 0, 4])
    with pytest.raises(GlmImageInputError, match="ids must be in 0..63"):
        render_grid(torch.tensor([[[64]]]), 64)
