import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glmimage_core.errors import GlmImageInputError
from glmimage_core.payloads import PriorTokens, upsample_d32_to_d16
from glmimage_core.tokens.files import is_token_file, load_prior, save_prior
from glmimage_core.tokens.folders import list_token_files, resolve_token_path
from glmimage_core.tokens.grid_preview import render_grid


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


# --- header first: nothing but token files is ever read --------------------------------------------
def _safetensors_header(tensors: dict, metadata: dict) -> bytes:
    header = json.dumps({"__metadata__": metadata, **tensors}).encode()
    return len(header).to_bytes(8, "little") + header


def test_a_file_too_large_to_hold_tokens_is_refused_from_its_size(tmp_path):
    from glmimage_core.tokens.files import MAX_FILE_BYTES

    path = save_prior(_prior("t2i"), tmp_path / "big.safetensors")
    os.truncate(path, 20 * 2**30)  # a sparse 20 GiB file with a token file's valid header at its start
    with pytest.raises(GlmImageInputError, match=r"is 20480.0 MiB; GLM-Image token files are far smaller"):
        load_prior(path)
    assert not is_token_file(path)
    os.truncate(path, MAX_FILE_BYTES + 1)
    with pytest.raises(GlmImageInputError, match="far smaller"):
        load_prior(path)


def test_a_weights_file_is_refused_from_its_header_before_any_tensor_is_read(tmp_path):
    # A valid header whose data section is cut short: reading any tensor of it would fail with
    # another error; refusing it as 'not a token file' shows that only the header was read.
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(_safetensors_header(
        {"model.embed.weight": {"dtype": "F32", "shape": [4096, 4096], "data_offsets": [0, 4096 * 4096 * 4]}},
        {"format": "pt"}) + b"\x00" * 100)
    with pytest.raises(GlmImageInputError, match=r"not a GLM-Image token file \(format 'pt'"):
        load_prior(weights)
    # Token metadata but other tensors (a renamed weights file): refused from the tensor index.
    meta = {"format": "glm-image-prior", "version": "1", "mode": "t2i", "prompt": "", "codebook_size": "64",
            "token_h": "3", "token_w": "4", "batch_size": "1", "num_sources": "0", "seeds": "[]"}
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(_safetensors_header(
        {"model.embed.weight": {"dtype": "F32", "shape": [4096, 4096], "data_offsets": [0, 4096 * 4096 * 4]}},
        meta) + b"\x00" * 100)
    with pytest.raises(GlmImageInputError, match=r"holds tensors \['model.embed.weight'\]"):
        load_prior(disguised)
    # The right names but the wrong dtype, or data beyond the end of the file.
    for entry, message in [({"dtype": "F32", "shape": [1, 3, 4], "data_offsets": [0, 48]}, "F32"),
                           ({"dtype": "I64", "shape": [1, 3, 4], "data_offsets": [0, 96]}, "outside the file")]:
        wrong = tmp_path / "wrong.safetensors"
        wrong.write_bytes(_safetensors_header({"grids": entry}, meta) + b"\x00" * 10)
        with pytest.raises(GlmImageInputError, match=message):
            load_prior(wrong)
        assert not is_token_file(wrong)


# --- only ComfyUI's folders ----------------------------------------------------------------------
@pytest.fixture
def folders(tmp_path):
    out = {kind: tmp_path / "comfy" / kind for kind in ("input", "output", "temp")}
    for path in out.values():
        path.mkdir(parents=True)
    return {kind: str(path) for kind, path in out.items()}


def test_names_resolve_inside_the_folder_their_annotation_names(folders):
    assert resolve_token_path("a.safetensors", folders) == Path(os.path.realpath(folders["input"])) / "a.safetensors"
    assert (resolve_token_path("glm_image/t.safetensors [output]", folders)
            == Path(os.path.realpath(folders["output"])) / "glm_image" / "t.safetensors")
    assert resolve_token_path("x/../t.safetensors [temp]", folders).parent == Path(os.path.realpath(folders["temp"]))


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret.safetensors", "glm_image/../../x.safetensors [output]",
                                  "../output/t.safetensors", "..", "a/../../../etc/hosts [temp]"])
def test_paths_outside_comfyuis_folders_are_refused(folders, name):
    with pytest.raises(GlmImageInputError, match="points outside ComfyUI's (input|output|temp) folder"):
        resolve_token_path(name, folders, "token_file")


def test_symlinks_that_escape_are_refused_and_not_listed(folders, tmp_path):
    outside = save_prior(_prior("t2i"), tmp_path / "elsewhere" / "t.safetensors")
    (Path(folders["input"]) / "link.safetensors").symlink_to(outside)
    (Path(folders["input"]) / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    for name in ["link.safetensors", "linked_dir/t.safetensors"]:
        with pytest.raises(GlmImageInputError, match="file: 'link.*' points outside ComfyUI's input folder"):
            resolve_token_path(name, folders)
    assert list_token_files(folders) == []
    inside = save_prior(_prior("t2i"), Path(folders["input"]) / "real.safetensors")
    (Path(folders["input"]) / "alias.safetensors").symlink_to(inside)  # a link that stays inside is fine
    assert resolve_token_path("alias.safetensors", folders) == Path(os.path.realpath(inside))


def test_listing_shows_token_files_of_input_and_the_packs_output_folder(folders):
    inp, out = Path(folders["input"]), Path(folders["output"])
    save_prior(_prior("t2i"), inp / "mine.safetensors")
    save_prior(_prior("i2i"), inp / "sub" / "nested.safetensors")  # input/ is listed without subfolders
    save_prior(_prior("t2i"), out / "glm_image" / "tokens_00001_.safetensors")
    save_prior(_prior("t2i"), out / "glm_image" / "run" / "tokens_00001_.safetensors")
    save_prior(_prior("t2i"), out / "elsewhere" / "tokens_00001_.safetensors")  # not the pack's folder
    save_file({"w": torch.zeros(3)}, str(inp / "weights.safetensors"), metadata={"format": "pt"})
    (inp / "picture.png").write_bytes(b"png")
    (inp / "fake.safetensors").write_bytes(b"garbage")
    listed = ["mine.safetensors", "glm_image/run/tokens_00001_.safetensors [output]",
              "glm_image/tokens_00001_.safetensors [output]"]
    assert list_token_files(folders) == listed
    for name in listed + ["sub/nested.safetensors", "elsewhere/tokens_00001_.safetensors [output]"]:
        assert load_prior(resolve_token_path(name, folders)).codebook_size == 64  # loadable by name
    (inp / "mine.safetensors").write_bytes(b"no longer tokens")  # the list follows changed files
    save_prior(_prior("t2i"), inp / "fake.safetensors")
    assert list_token_files(folders) == ["fake.safetensors"] + listed[1:]
