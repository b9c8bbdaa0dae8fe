"""The saved-workflow -> API prompt converter of tests/comfy_harness.py, on a hand-written
object_info (no ComfyUI needed): positional widgets, seeds' 'control after generate', upload
buttons, links, Reroute/PrimitiveNode/Note, muted and bypassed nodes."""

import pytest

from tests.comfy_harness import (ComfyError, comfy033_missing_reason, comfyui_missing_reason, comfyui_version,
                                 execution_error, extra_widget_values, widget_values, workflow_to_api_prompt)

OBJECT_INFO = {
    "LoadImage": {"input": {"required": {"image": [["a.png", "b.png"], {"image_upload": True}]}},
                  "output": ["IMAGE", "MASK"]},
    "Sampler": {"input": {"required": {"model": ["MODEL"], "seed": ["INT", {"default": 0}],
                                       "steps": ["INT", {"default": 20}],
                                       "sampler": [["euler", "dpm"]]},
                          "optional": {"image": ["IMAGE"], "text": ["STRING", {"multiline": True}],
                                       "strength": ["FLOAT", {"default": 1.0}],
                                       "variant": ["INT", {"control_after_generate": True}],
                                       "pick": ["COMBO", {"options": ["x", "y"], "control_after_generate": True}],
                                       "count": ["INT", {"forceInput": True}],
                                       "noise_seed": ["INT", {"control_after_generate": False}]}},
                "output": ["IMAGE"]},
    "Loader": {"input": {"required": {"name": [["m1", "m2"], {}]}}, "output": ["MODEL"]},
    "Blur": {"input": {"required": {"image": ["IMAGE"], "radius": ["INT", {}]}}, "output": ["IMAGE"]},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}},
                  "output": [], "output_node": True},
}


def node(id, type, widgets=None, inputs=(), mode=0):
    return {"id": id, "type": type, "mode": mode, "widgets_values": widgets,
            "inputs": [dict(name=n, type=t, link=l, **({"widget": {"name": n}} if w else {}))
                       for n, t, l, *w in inputs]}


def workflow():
    return {
        "nodes": [
            node(1, "Loader", ["m2"]),
            node(2, "LoadImage", ["b.png", "image"]),
            node(3, "Sampler", [123, "randomize", 8, "dpm", "hello", 0.5, 7, "fixed", "y", "increment", 5],
                 inputs=[("model", "MODEL", 1), ("image", "IMAGE", 2), ("count", "INT", 3),
                         ("steps", "INT", 4, True)]),
            node(4, "SaveImage", ["out"], inputs=[("images", "IMAGE", 5)]),
            node(5, "Note", ["just text"]),
            node(6, "PrimitiveNode", [3, "fixed"]),
            node(7, "PrimitiveNode", [30, "fixed"]),
            node(8, "Reroute", inputs=[("", "*", 6)]),
            {"id": 9, "type": "MarkdownNote", "widgets_values": ["# hi"]},
        ],
        # [link_id, from_node, from_slot, to_node, to_slot, type]
        "links": [[1, 1, 0, 3, 0, "MODEL"], [2, 8, 0, 3, 1, "IMAGE"], [3, 6, 0, 3, 2, "INT"],
                  [4, 7, 0, 3, 3, "INT"], [5, 3, 0, 4, 0, "IMAGE"], [6, 2, 0, 8, 0, "IMAGE"]],
    }


def test_widgets_links_primitives_reroutes_and_notes():
    prompt = workflow_to_api_prompt(workflow(), OBJECT_INFO)
    assert set(prompt) == {"1", "2", "3", "4"}  # Note, MarkdownNote, PrimitiveNode, Reroute are editor-only
    assert prompt["1"] == {"class_type": "Loader", "inputs": {"name": "m2"}}
    assert prompt["2"] == {"class_type": "LoadImage", "inputs": {"image": "b.png"}}  # upload button skipped
    assert prompt["3"] == {"class_type": "Sampler", "inputs": {
        "model": ["1", 0],
        "seed": 123,          # 'randomize' after it is skipped (an INT named seed)
        "steps": 30,          # a widget turned into an input, fed by a PrimitiveNode
        "sampler": "dpm",
        "image": ["2", 0],    # through the Reroute to LoadImage
        "text": "hello",
        "strength": 0.5,
        "variant": 7,         # control_after_generate: 'fixed' skipped
        "pick": "y",          # a COMBO with control_after_generate: 'increment' skipped
        "noise_seed": 5,      # control_after_generate=False: no extra value
        "count": 3,           # forceInput: not a widget, its value comes from the PrimitiveNode
    }}
    assert prompt["4"] == {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "out"}}


def test_object_links_format_is_read_too():
    wf = workflow()
    wf["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                   for link in wf["links"]]
    assert workflow_to_api_prompt(wf, OBJECT_INFO) == workflow_to_api_prompt(workflow(), OBJECT_INFO)


def test_bypassed_node_passes_its_input_on_and_muted_node_is_dropped():
    wf = workflow()
    wf["nodes"].append(node(10, "Blur", [4], inputs=[("image", "IMAGE", 7)], mode=4))
    wf["links"] += [[7, 3, 0, 10, 0, "IMAGE"], [8, 10, 0, 11, 0, "IMAGE"]]
    wf["nodes"].append(node(11, "SaveImage", ["bypassed"], inputs=[("images", "IMAGE", 8)]))
    wf["nodes"].append(node(12, "SaveImage", ["muted"], inputs=[("images", "IMAGE", 5)], mode=2))
    prompt = workflow_to_api_prompt(wf, OBJECT_INFO)
    assert "10" not in prompt and "12" not in prompt
    assert prompt["11"]["inputs"] == {"images": ["3", 0], "filename_prefix": "bypassed"}


def test_short_or_named_widget_values():
    info = OBJECT_INFO["Sampler"]
    assert widget_values({"widgets_values": [1, "fixed", 2]}, info) == {"seed": 1, "steps": 2}
    assert widget_values({"widgets_values": {"steps": 4, "bogus": 1}}, info) == {"steps": 4}
    assert extra_widget_values("seed", "FLOAT", {}) == 0
    assert extra_widget_values("seed", "INT", {}) == 1


def test_unknown_node_type_is_an_error_that_names_it():
    wf = {"nodes": [node(1, "NotInstalled", [1])], "links": []}
    with pytest.raises(ComfyError, match="NotInstalled"):
        workflow_to_api_prompt(wf, OBJECT_INFO)


def test_execution_error_summary_and_missing_tree(tmp_path):
    entry = {"status": {"status_str": "error", "messages": [
        ["execution_start", {}],
        ["execution_error", {"node_id": "3", "node_type": "Sampler", "exception_type": "ValueError",
                             "exception_message": "bad size"}]]}}
    assert execution_error(entry) == "Sampler (node 3): ValueError: bad size"
    assert "scripts/setup_env.sh" in comfyui_missing_reason(tmp_path)


def test_comfyui_033_reasons_name_what_is_missing_and_how_to_get_it(tmp_path):
    tree, python, tarball = tmp_path / "comfyui-0.33.0", tmp_path / "venv" / "bin" / "python", tmp_path / "c.tar.gz"
    no_snapshot = comfy033_missing_reason(tree, python, tarball)
    assert str(tarball) in no_snapshot and "GLMIMAGE_COMFY033_TARBALL" in no_snapshot
    tarball.write_bytes(b"")  # a snapshot, not unpacked yet
    assert "scripts/setup_env.sh" in comfy033_missing_reason(tree, python, tarball)
    tree.mkdir()
    (tree / "main.py").write_text("")
    (tree / "comfyui_version.py").write_text('__version__ = "0.3.75"\n')  # some other release
    assert "0.33.0" in comfy033_missing_reason(tree, python, tarball)
    (tree / "comfyui_version.py").write_text('# generated\n__version__ = "0.33.0"\n')
    assert comfyui_version(tree) == "0.33.0"
    assert str(python) in comfy033_missing_reason(tree, python, tarball)  # no venv yet
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert ".glmimage-stamp" in comfy033_missing_reason(tree, python, tarball)  # venv install unfinished
    (python.parent.parent / ".glmimage-stamp").write_text("1 abc")
    assert comfy033_missing_reason(tree, python, tarball) is None
