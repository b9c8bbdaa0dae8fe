"""The pack inside a real ComfyUI server, driven through its HTTP API like the editor does."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.comfy_harness import input_specs, is_widget, node_id, widget_values, workflow_to_api_prompt

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
PACK_NODES = ["GLMImageARLoader", "GLMImageShape", "GLMImagePrompt", "GLMImageGenerateTokens",
              "GLMImageExtractTokens", "GLMImagePreviewTokens", "GLMImageSaveTokens", "GLMImageLoadTokens",
              "GLMImageDecoderLoader", "GLMImageDecode", "GLMImageDiTLoader", "GLMImageVAELoader",
              "GLMImageGlyphEncoderLoader", "GLMImageConditioning", "GLMImageScheduler",
              "GLMImageLoraLoader", "GLMImageARLoraLoader", "GLMImageGenerateTokensServer",
              "GLMImageARProcessorLoader"]


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_every_pack_node_is_registered_with_tooltips(object_info, comfy_server):
    missing = [n for n in PACK_NODES if n not in object_info]
    assert not missing, f"not registered: {missing}\n{comfy_server.log_tail()}"
    for name in PACK_NODES:
        info = object_info[name]
        assert info["category"] == "GLM-Image" and info["display_name"] and info["description"]
        for spec_name, kind, options in input_specs(info):
            assert options.get("tooltip"), f"{name}.{spec_name} has no tooltip"
        assert all(info["output_tooltips"]), name
    loader_models = object_info["GLMImageARLoader"]["input"]["required"]["model"]
    assert "GLM-Image" in json.dumps(loader_models)  # models/glm_image is registered and listed


def test_example_workflows_match_the_node_definitions(object_info):
    assert {w.name for w in WORKFLOWS} >= {"glm_image_text_to_image.json", "glm_image_image_to_image.json",
                                           "glm_image_tokens_roundtrip.json", "glm_image_ksampler.json"}
    for path in WORKFLOWS:
        workflow = json.loads(path.read_text())
        nodes = {n["id"]: n for n in workflow["nodes"]}
        for node in workflow["nodes"]:
            info = object_info.get(node["type"])
            assert info is not None, f"{path.name}: unknown node type {node['type']}"
            specs = {name: (kind, options) for name, kind, options in input_specs(info)}
            widgets = [n for n, (k, o) in specs.items() if is_widget(k, o)]
            values = widget_values(node, info)
            assert list(values) == widgets[:len(values)] and len(values) == len(widgets), (path.name, node["type"])
            for name, value in values.items():
                kind, options = specs[name]
                choices = kind if isinstance(kind, list) else options.get("options")
                if choices is not None:
                    # model / image / token_file list what is on this machine; the saved value may not be there
                    assert value in choices or name in ("model", "image", "token_file"), (path.name, name, value)
                if kind in ("INT", "FLOAT"):
                    assert options.get("min", value) <= value <= options.get("max", value), (path.name, name)
            for slot in node.get("inputs", []):
                if slot.get("link") is None:
                    continue
                assert slot["name"] in specs, (path.name, node["type"], slot["name"])
                kind = specs[slot["name"]][0]
                link = next(l for l in workflow["links"] if l[0] == slot["link"])
                _, src, src_slot, dst, _, link_type = link
                assert dst == node["id"] and slot["type"] in (link_type, "*")
                assert object_info[nodes[src]["type"]]["output"][src_slot] == link_type, (path.name, link)
                assert kind in (link_type, "*"), (path.name, slot["name"], kind, link_type)


@pytest.mark.parametrize("name", ["glm_image_text_to_image.json", "glm_image_image_to_image.json",
                                  "glm_image_tokens_roundtrip.json", "glm_image_ksampler.json",
                                  "glm_image_single_files.json"])
def test_example_workflow_runs_and_writes_pngs(comfy_server, object_info, name):
    workflow = json.loads((Path(__file__).resolve().parents[2] / "example_workflows" / name).read_text())
    prompt = workflow_to_api_prompt(workflow, object_info)
    entry = comfy_server.run(prompt)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    decoded = [img for img in images if "tokens_preview" not in img["filename"]]
    assert decoded and len(images) == 2, entry["outputs"]
    for img in images:
        path = comfy_server.output_dir / img.get("subfolder", "") / img["filename"]
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.size[0] >= 32 and picture.size[1] >= 32


def test_changing_only_decode_settings_does_not_rerun_the_token_stage(comfy_server, object_info):
    workflow = json.loads((Path(__file__).resolve().parents[2] / "example_workflows" /
                           "glm_image_text_to_image.json").read_text())
    prompt = workflow_to_api_prompt(workflow, object_info)
    shape_id = node_id(prompt, "GLMImageShape")
    prompt[shape_id]["inputs"].update(size_from="pixels", width=96, height=128)  # small: quick on a CPU
    decode_id = node_id(prompt, "GLMImageDecode")
    prompt[decode_id]["inputs"]["steps"] = 4
    comfy_server.run(prompt)
    prompt[decode_id]["inputs"]["steps"] = 3
    prompt[decode_id]["inputs"]["seed"] = 99
    entry = comfy_server.run(prompt)
    cached = next(m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached")
    generate_id = node_id(prompt, "GLMImageGenerateTokens")
    assert generate_id in cached and decode_id not in cached, cached


def test_bad_input_is_reported_with_the_input_named(comfy_server, object_info):
    workflow = json.loads((Path(__file__).resolve().parents[2] / "example_workflows" /
                           "glm_image_text_to_image.json").read_text())
    prompt = workflow_to_api_prompt(workflow, object_info)
    shape_id = node_id(prompt, "GLMImageShape")
    prompt[shape_id]["inputs"].update(size_from="tag", tag="<sop>36x24<eop>")
    with pytest.raises(Exception, match=r"malformed: write it as <sop>H W<eop>"):
        comfy_server.run(prompt)
