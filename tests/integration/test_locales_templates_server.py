"""What ComfyUI 0.3.75 serves the editor from the pack besides its nodes: display names, translations, templates.

- /object_info's `output_name` is what the editor writes on output sockets: the display names.
- /i18n (also /api/i18n; app/custom_node_manager.py) merges every custom_nodes/*/locales/<lang>/
  main.json with nodeDefs.json under "nodeDefs"; the editor reads its node strings from there.
- /workflow_templates lists custom_nodes/*/example_workflows/*.json by pack folder name, and
  /api/workflow_templates/<pack>/ serves that folder; the template browser shows <stem>.jpg as each
  template's thumbnail.
"""

import io
import json
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.comfy_harness import PACK_NAME

REPO = Path(__file__).resolve().parents[2]
LOCALES = REPO / "locales"
WORKFLOWS = sorted((REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def pack_nodes(object_info):
    nodes = {name: info for name, info in object_info.items() if info.get("category", "").startswith("GLM-Image")}
    assert len(nodes) >= 15, sorted(nodes)
    return nodes


def fetch(server, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(server.url + path, timeout=60) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_outputs_show_display_names_not_types(pack_nodes):
    assert pack_nodes["GLMImageShape"]["output_name"] == [
        "shape", "width (px)", "height (px)", "grid height", "grid width", "preview height", "preview width",
        "t2i token count", "i2i token count"]
    for name, info in pack_nodes.items():
        for shown, kind in zip(info["output_name"], info["output"]):
            assert not shown.startswith("GLMIMAGE_") and (shown != kind or kind in (
                "IMAGE", "MODEL", "VAE", "LATENT", "SIGMAS")), (name, info["output_name"])


@pytest.mark.parametrize("route", ["/i18n", "/api/i18n"])
def test_i18n_serves_the_pack_strings_in_english_and_chinese(comfy_server, pack_nodes, route):
    served = comfy_server.get(route)
    for lang in ("en", "zh"):
        ours = json.loads((LOCALES / lang / "nodeDefs.json").read_text(encoding="utf-8"))
        assert set(pack_nodes) <= set(served[lang]["nodeDefs"]), (lang, sorted(served[lang]["nodeDefs"])[:20])
        for name in pack_nodes:
            assert served[lang]["nodeDefs"][name] == ours[name], (lang, name)
        assert served[lang]["nodeCategories"]["GLM-Image"], lang
    # English is what the server's own schema says, string for string
    en = served["en"]["nodeDefs"]
    for name, info in pack_nodes.items():
        assert en[name]["display_name"] == info["display_name"] and en[name]["description"] == info["description"]
        for i, (shown, tooltip) in enumerate(zip(info["output_name"], info["output_tooltips"])):
            assert en[name]["outputs"][str(i)] == {"name": shown, "tooltip": tooltip}, (name, i)
        for group in ("required", "optional"):
            for input_name, spec in (info["input"].get(group) or {}).items():
                assert en[name]["inputs"][input_name]["tooltip"] == spec[1]["tooltip"], (name, input_name)
    zh = served["zh"]["nodeDefs"]
    assert zh["GLMImageGenerateTokens"]["display_name"] == "GLM-Image \u751f\u6210\u8bcd\u5143"
    assert zh["GLMImageShape"]["outputs"]["1"]["name"] == "\u5bbd\u5ea6\uff08\u50cf\u7d20\uff09"


def test_example_workflows_are_templates_with_thumbnails(comfy_server):
    listed = comfy_server.get("/api/workflow_templates")
    assert sorted(listed.get(PACK_NAME, [])) == sorted(w.stem for w in WORKFLOWS), listed
    for workflow in WORKFLOWS:
        base = f"/api/workflow_templates/{PACK_NAME}/{workflow.stem}"
        status, kind, body = fetch(comfy_server, base + ".json")
        assert status == 200 and json.loads(body) == json.loads(workflow.read_text()), workflow.name
        status, kind, body = fetch(comfy_server, base + ".jpg")
        assert status == 200 and kind == "image/jpeg", (workflow.stem, status, kind)
        picture = Image.open(io.BytesIO(body))
        assert picture.format == "JPEG" and picture.width == picture.height >= 256, (workflow.stem, picture.size)
        assert len(body) <= 100_000, (workflow.stem, len(body))
