"""Workflows saved with an earlier release keep working on this pack, in a real ComfyUI server.

tests/fixtures/workflows/<version>/ holds each release's example workflows as users saved them: editor/
(the editor's own format) and api/ (what the editor's "Export (API)" wrote with that release installed);
scripts/freeze_workflows.py makes a folder, and every folder found there is tested, so freezing a release
adds it here. For each workflow:

- the editor format goes through workflow_to_api_prompt with THIS server's /object_info, which reads the
  saved widgets_values by position as the editor does: every value must land on the input of the same
  name the release's own editor gave it (its api/ file), so inputs added since come after the old ones;
- the API format is queued as it is: an old prompt lacks the inputs added since, which must be optional
  with the old behaviour as their default;
- both run to the end and write their pictures. Only sizes and steps are made smaller (the shape node,
  the decode node's / KSampler's steps), nothing is added; the two formats get different step counts so
  that the second one renders again instead of reading ComfyUI's cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.comfy_harness import input_specs, workflow_to_api_prompt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "workflows"
FORMATS = ("api", "editor")
CASES = [(version.name, fmt, path.name) for version in sorted(FIXTURES.iterdir()) if version.is_dir()
         for fmt in FORMATS for path in sorted((version / fmt).glob("*.json"))]
# Small and quick on the CPU test server: a 96x128 px picture (3x4 tokens), a few denoising steps.
SHAPE = {"size_from": "pixels", "width": 128, "height": 96, "tag": "<sop>3 4<eop>"}
STEPS = {"api": 2, "editor": 3}
RENDERERS = ("GLMImageDecode", "KSampler")
PACK_PREFIX = "GLMImage"  # the pack's node ids
# A widget whose saved value the current node reads under another name (same meaning): the value the
# editor saved in 0.1.0's 'file' widget of Load GLM-Image tokens now lands on 'token_file', its first
# widget, and names the same file ('file' became a socket-only input that wins when linked).
MOVED_WIDGETS = {("GLMImageLoadTokens", "token_file"): "file"}


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def load(version: str, fmt: str, name: str) -> dict:
    return json.loads((FIXTURES / version / fmt / name).read_text())


def api_prompt(version: str, fmt: str, name: str, object_info: dict) -> dict:
    saved = load(version, fmt, name)
    return workflow_to_api_prompt(saved, object_info) if fmt == "editor" else saved


def shrunk(prompt: dict, fmt: str) -> dict:
    """The prompt with a small picture and few steps; typed-in values only, nothing added."""
    prompt = json.loads(json.dumps(prompt))
    for node in prompt.values():
        inputs = node["inputs"]
        changes = SHAPE if node["class_type"] == "GLMImageShape" else (
            {"steps": STEPS[fmt]} if node["class_type"] in RENDERERS else {})
        for key, value in changes.items():
            assert key in inputs and not isinstance(inputs[key], list), (node["class_type"], key)
            inputs[key] = value
    return prompt


def test_there_are_frozen_workflows_of_every_release_format():
    assert {(v, f) for v, f, _ in CASES} >= {("0.1.0", "api"), ("0.1.0", "editor"), ("0.2.0", "api"),
                                             ("0.2.0", "editor")}
    assert len([c for c in CASES if c[0] == "0.1.0"]) == 6


@pytest.mark.parametrize("version,name", sorted({(v, n) for v, f, n in CASES if f == "editor"}))
def test_saved_widget_values_land_on_the_inputs_they_were_saved_for(object_info, version, name):
    """The editor reads widgets_values by position: each old value must reach the input of the name the
    release's own editor exported it under, so new widgets come after the old ones on every node."""
    converted = api_prompt(version, "editor", name, object_info)
    exported = load(version, "api", name)
    assert set(converted) == set(exported)
    for nid, node in converted.items():
        old = exported[nid]["inputs"]
        assert node["class_type"] == exported[nid]["class_type"]
        for key, value in node["inputs"].items():
            if isinstance(value, list):
                assert old.get(key) == value, (name, nid, node["class_type"], key)  # links: same input, same source
                continue
            old_key = key if key in old else MOVED_WIDGETS.get((node["class_type"], key), key)
            assert old_key in old, f"{name} node {nid} {node['class_type']}: {key}={value!r} was not saved as {key}"
            if isinstance(old[old_key], list):
                continue  # the old widget was linked; its saved value is not used (the link is, under old_key)
            assert value == old[old_key], (name, nid, node["class_type"], key, value, old[old_key])
        # every input of a pack node the release's editor exported still exists, under its name (none renamed
        # or removed); core nodes are ComfyUI's (its editor adds e.g. PreviewAny's display-only 'preview')
        if node["class_type"].startswith(PACK_PREFIX):
            known = {spec[0] for spec in input_specs(object_info[node["class_type"]])}
            assert set(old) <= known, (name, node["class_type"], set(old) - known)


@pytest.mark.parametrize("version,fmt,name", CASES)
def test_saved_workflow_runs_on_this_pack(comfy_server, object_info, version, fmt, name):
    prompt = shrunk(api_prompt(version, fmt, name, object_info), fmt)
    for nid, node in prompt.items():
        if node["class_type"].startswith(PACK_PREFIX):
            known = {spec[0] for spec in input_specs(object_info[node["class_type"]])}
            assert set(node["inputs"]) <= known, (version, fmt, name, nid, set(node["inputs"]) - known)
    entry = comfy_server.run(prompt)
    cached = next((m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"), [])
    renderers = [nid for nid, node in prompt.items() if node["class_type"] in RENDERERS]
    assert renderers and not set(renderers) & set(cached), (renderers, cached)  # it really rendered
    paths = comfy_server.output_images(entry)
    pictures = [p for p in paths if "tokens_preview" not in p.name]
    assert len(pictures) == 1 and len(paths) == 2, entry["outputs"]
    with Image.open(pictures[0]) as picture:
        if any(node["class_type"] == "GLMImageShape" for node in prompt.values()):
            assert picture.size == (SHAPE["width"], SHAPE["height"]), picture.size
        else:  # image-to-image: the source's size (256x192) taken to the model's range, multiples of 32
            assert picture.size[0] % 32 == 0 and picture.size[1] % 32 == 0 and picture.size[0] > picture.size[1]
