"""Load / Save GLM-Image tokens in the real server: the dropdown, the linked path, and every refusal."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glmimage_core.payloads import PriorTokens
from glmimage_core.tokens.files import save_prior
from tests.comfy_harness import ComfyError, input_specs, node_id, workflow_to_api_prompt

LOAD = "GLMImageLoadTokens"
ROUNDTRIP = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_tokens_roundtrip.json"


def token_file_options(server) -> list[str]:
    """The dropdown as the editor gets it on a (re)load or refresh: /object_info, read afresh."""
    info = server.get(f"/object_info/{LOAD}")[LOAD]
    kind, options = next((kind, options) for name, kind, options in input_specs(info) if name == "token_file")
    return kind if isinstance(kind, list) else options["options"]


def write_tokens(path: Path, token_h: int = 5, token_w: int = 7) -> Path:
    prior = PriorTokens(grids=torch.randint(0, 64, (1, token_h, token_w)), mode="t2i", prompt="a test",
                        codebook_size=64, seeds=[0])
    return save_prior(prior, path)


def load_prompt(token_file, file=None) -> dict:
    """Load tokens -> Preview tokens (1 px per token) -> SaveImage; `file`, when given, is linked
    from a PrimitiveString."""
    prompt = {
        "load": {"class_type": LOAD, "inputs": {"token_file": token_file}},
        "preview": {"class_type": "GLMImagePreviewTokens", "inputs": {"prior": ["load", 0], "cell_px": 1}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["preview", 0], "filename_prefix": "loaded"}},
    }
    if file is not None:
        prompt["path"] = {"class_type": "PrimitiveString", "inputs": {"value": file}}
        prompt["load"]["inputs"]["file"] = ["path", 0]
    return prompt


def picture_size(server, entry) -> tuple[int, int]:
    from PIL import Image

    (path,) = server.output_images(entry)
    with Image.open(path) as picture:
        return picture.size


def test_the_dropdown_lists_token_files_and_follows_a_refresh(comfy_server):
    before = token_file_options(comfy_server)
    assert "mine.safetensors" not in before
    write_tokens(comfy_server.input_dir / "mine.safetensors")
    write_tokens(comfy_server.output_dir / "glm_image" / "run" / "nested.safetensors")
    save_file({"w": torch.zeros(4)}, str(comfy_server.input_dir / "weights.safetensors"), metadata={"format": "pt"})
    big = write_tokens(comfy_server.input_dir / "big.safetensors")
    os.truncate(big, 20 * 2**30)  # sparse: 20 GiB by its size, nothing on disk
    after = token_file_options(comfy_server)  # what the editor's refresh fetches
    assert "mine.safetensors" in after and "glm_image/run/nested.safetensors [output]" in after
    assert "weights.safetensors" not in after and "big.safetensors" not in after

    comfy_server.run({
        "load": {"class_type": LOAD, "inputs": {"token_file": "mine.safetensors"}},
        "save": {"class_type": "GLMImageSaveTokens", "inputs": {"prior": ["load", 0],
                                                               "filename_prefix": "glm_image/listed"}},
    })
    written = sorted((comfy_server.output_dir / "glm_image").glob("listed_*.safetensors"))
    assert len(written) == 1, written
    assert f"glm_image/{written[0].name} [output]" in token_file_options(comfy_server)


def test_a_linked_dropdown_loads_the_file_it_names(comfy_server, object_info):
    write_tokens(comfy_server.input_dir / "linked.safetensors", token_h=3, token_w=9)
    combo = next(n for n in ("ConvertStringToComboNode", "LinkTestStringToCombo") if n in object_info)
    prompt = load_prompt(["combo", 0])
    prompt["name"] = {"class_type": "PrimitiveString", "inputs": {"value": "linked.safetensors"}}
    prompt["combo"] = {"class_type": combo, "inputs": {"string": ["name", 0]}}
    assert picture_size(comfy_server, comfy_server.run(prompt)) == (9, 3)


def test_a_linked_file_wins_over_the_dropdown(comfy_server):
    write_tokens(comfy_server.input_dir / "dropdown.safetensors", token_h=2, token_w=2)
    write_tokens(comfy_server.output_dir / "glm_image" / "by_link.safetensors", token_h=4, token_w=6)
    entry = comfy_server.run(load_prompt("dropdown.safetensors", file="glm_image/by_link.safetensors [output]"))
    assert picture_size(comfy_server, entry) == (6, 4)
    # The dropdown is not checked while the link drives the node: a stale name does not block the run.
    entry = comfy_server.run(load_prompt("gone.safetensors", file="glm_image/by_link.safetensors [output]"))
    assert picture_size(comfy_server, entry) == (6, 4)


@pytest.fixture(scope="module")
def outside_file(comfy_server):
    """A real token file next to ComfyUI's folders, not inside any of them, and a symlink to it in input/."""
    outside = write_tokens(comfy_server.base / "outside.safetensors")
    (comfy_server.input_dir / "escape.safetensors").symlink_to(outside)
    (comfy_server.input_dir / "escape_dir").symlink_to(comfy_server.base, target_is_directory=True)
    return outside


@pytest.mark.parametrize("name", ["../outside.safetensors", "escape.safetensors", "escape_dir/outside.safetensors",
                                  "glm_image/../../outside.safetensors [output]", "/etc/hosts"])
def test_typed_in_names_outside_comfyuis_folders_are_refused_when_queued(comfy_server, outside_file, name):
    assert outside_file.is_file()
    with pytest.raises(ComfyError, match=r"token_file: .* points outside ComfyUI's (input|output) folder"):
        comfy_server.queue_prompt(load_prompt(name))
    assert not {"escape.safetensors", "escape_dir/outside.safetensors"} & set(token_file_options(comfy_server))


@pytest.mark.parametrize("name", ["../outside.safetensors", "escape.safetensors", "/etc/hosts"])
def test_linked_names_outside_comfyuis_folders_are_refused_when_the_node_runs(comfy_server, outside_file, name):
    write_tokens(comfy_server.input_dir / "fine.safetensors")
    with pytest.raises(ComfyError, match=r"file: .* points outside ComfyUI's input folder"):
        comfy_server.run(load_prompt("fine.safetensors", file=name))


def test_weights_and_huge_files_are_refused_from_their_header_and_size(comfy_server):
    write_tokens(comfy_server.input_dir / "fine.safetensors")
    weights = comfy_server.input_dir / "model.safetensors"
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "w": {"dtype": "F32", "shape": [2048, 2048], "data_offsets": [0, 2048 * 2048 * 4]}})
    # A valid header over a cut-off data section: reading any tensor of it would fail differently.
    weights.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 64)
    with pytest.raises(ComfyError, match=r"token_file: 'model.safetensors' is not a GLM-Image token file "
                                         r"\(format 'pt'"):
        comfy_server.queue_prompt(load_prompt("model.safetensors"))
    with pytest.raises(ComfyError, match=r"file: 'model.safetensors' is not a GLM-Image token file"):
        comfy_server.run(load_prompt("fine.safetensors", file="model.safetensors"))
    huge = write_tokens(comfy_server.input_dir / "huge.safetensors")
    os.truncate(huge, 20 * 2**30)
    with pytest.raises(ComfyError, match=r"token_file: 'huge.safetensors' is 20480.0 MiB; GLM-Image token files "
                                         r"are far smaller"):
        comfy_server.queue_prompt(load_prompt("huge.safetensors"))


def test_the_roundtrip_workflow_is_cached_on_a_second_run(comfy_server, object_info):
    """Load tokens' fingerprint copes with its linked 'file' (it used to fail, so the node and the
    decoder after it re-ran on every queue)."""
    prompt = workflow_to_api_prompt(json.loads(ROUNDTRIP.read_text()), object_info)
    for node in prompt.values():  # small and quick on the CPU server
        if node["class_type"] == "GLMImageDecode":
            node["inputs"]["steps"] = 2
        if node["class_type"] == "GLMImageShape":
            node["inputs"].update(size_from="tag", tag="<sop>3 4<eop>")
    comfy_server.run(prompt)
    entry = comfy_server.run(prompt)
    cached = next(m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached")
    load_id = node_id(prompt, LOAD)
    assert set(prompt) <= set(cached), (sorted(set(prompt) - set(cached)), cached)
    assert load_id in cached


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()
