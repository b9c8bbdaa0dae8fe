"""Every widget input of every pack node can be driven by a link, and the prompt still validates and runs.

ComfyUI hands a node's `validate_inputs` / `fingerprint_inputs` only typed-in values: a linked
input arrives there as None (or not at all), and ComfyUI's own min/max and list checks skip it.
This test finds the pack's nodes and their widget inputs in the real server's /object_info (so a
node or input added later is covered without touching this file), and for each input in turn
replaces the typed-in value by a link from another node that delivers the same value:

- INT, FLOAT, STRING, BOOLEAN: ComfyUI's core primitive nodes (PrimitiveInt, ...);
- COMBO: PrimitiveString -> a node with a "COMBO" output. ComfyUI accepts a link into a COMBO input
  only from an output typed "COMBO" (or "*", as many packs' switch nodes have); no core node of
  0.3.75 or 0.33 registers such an output (0.33 has "Convert String to Combo" in its sources but
  leaves it out of its node list), so the test server carries a test-only one
  (tests/integration/comfy_test_nodes). Where ComfyUI registers its own, that is used.

The graph around a node is taken from the example workflows (the node and everything upstream of
it), or, for a node no example uses, built from its defaults with its socket inputs fed by the
example workflows' producers of those types. A 'Preview as Text' node reads the node's first
output, so the node runs; its text must equal that of the same graph with the value typed in, so
the linked value really reached the node.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.comfy_harness import PACK_NAME, ComfyError, input_specs, is_widget, workflow_to_api_prompt

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
PRIMITIVES = {"INT": "PrimitiveInt", "FLOAT": "PrimitiveFloat", "STRING": "PrimitiveString",
              "BOOLEAN": "PrimitiveBoolean"}
COMBO_SOURCES = ["ConvertStringToComboNode", "LinkTestStringToCombo"]  # ComfyUI's own first; both take 'string'
SINK = "PreviewAny"
# Cheaper values for the CPU test server, applied to every base graph (and so to the linked runs too).
FAST = {"GLMImageShape": {"width": 128, "height": 96, "tag": "<sop>3 4<eop>"}, "GLMImageDecode": {"steps": 2},
        # every run of the save node writes the same file (other tests of the shared server wrote it first)
        "GLMImageSaveCheckpoint": {"overwrite": True}}
SAVE_COUNTER = re.compile(r"_\d{5}_")
#: Combo values a node built from its defaults takes instead of the first choice: the shared test server's
#: models/loras holds the AR model's test LoRA (tests/integration/test_ar_lora_server.py) beside the DiT's.
PREFERRED = {("GLMImageLoraLoader", "lora_name"): lambda choice: "glm_ar_test_lora" not in choice,
             ("GLMImageARLoraLoader", "lora_name"): lambda choice: "glm_ar_test_lora" in choice}  # Save tokens numbers its files: two runs never write the same name


def pack_nodes(object_info: dict) -> list[str]:
    return sorted(name for name, info in object_info.items()
                  if PACK_NAME in info.get("python_module", "") or info.get("category", "").startswith("GLM-Image"))


def widget_inputs(info: dict) -> list[tuple[str, str]]:
    """(name, ComfyUI type) of the inputs the editor shows as widgets."""
    out = []
    for name, kind, options in input_specs(info):
        if is_widget(kind, options):
            out.append((name, "COMBO" if isinstance(kind, list) else kind))
    return out


def upstream(prompt: dict, node_id: str) -> dict:
    """The node and every node it depends on."""
    keep, todo = {}, [node_id]
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep[nid] = json.loads(json.dumps(prompt[nid]))
        todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return keep


def example_prompts(object_info: dict) -> list[dict]:
    prompts = []
    for path in WORKFLOWS:
        prompt = workflow_to_api_prompt(json.loads(path.read_text()), object_info)
        for node in prompt.values():
            node["inputs"].update(FAST.get(node["class_type"], {}))
        prompts.append({f"{path.stem}__{nid}": node for nid, node in _renamed(prompt, path.stem).items()})
    return prompts


def _renamed(prompt: dict, prefix: str) -> dict:
    """Node ids made unique across workflows (a server keeps its cache per node id)."""
    out = {}
    for nid, node in prompt.items():
        node = json.loads(json.dumps(node))
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2:
                node["inputs"][name] = [f"{prefix}__{value[0]}", value[1]]
        out[nid] = node
    return out


def base_graph(class_type: str, object_info: dict, examples: list[dict]) -> tuple[dict, str]:
    """A runnable graph that ends in `class_type`, and that node's id."""
    for prompt in examples:
        for nid, node in prompt.items():
            if node["class_type"] == class_type:
                return upstream(prompt, nid), nid
    info, graph, nid = object_info[class_type], {}, f"new__{class_type}"
    inputs = {}
    for name, kind, options in input_specs(info):
        optional = name in (info["input"].get("optional") or {})
        if is_widget(kind, options):
            choices = kind if isinstance(kind, list) else options.get("options")
            wanted = PREFERRED.get((class_type, name), lambda choice: True)
            first = next((choice for choice in choices or [] if wanted(choice)), choices[0] if choices else None)
            inputs[name] = options.get("default", first)
        elif not optional:
            producer = next(((pid, prompt) for prompt in examples for pid, node in prompt.items()
                             if kind in object_info[node["class_type"]]["output"]), None)
            assert producer is not None, f"{class_type}.{name}: no example workflow makes a {kind}"
            pid, prompt = producer
            graph.update(upstream(prompt, pid))
            inputs[name] = [pid, object_info[prompt[pid]["class_type"]]["output"].index(kind)]
    inputs.update({k: v for k, v in FAST.get(class_type, {}).items() if k in inputs})
    graph[nid] = {"class_type": class_type, "inputs": inputs}
    return graph, nid


#: Outputs whose text is only an object's address (a ModelPatcher, a ComfyUI VAE): the sink reads another
#: output of the node when it has one, so that a linked value that changed something shows.
OPAQUE_OUTPUTS = {"MODEL", "VAE"}
ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def with_sink(graph: dict, node_id: str, object_info: dict) -> dict:
    outputs = object_info[graph[node_id]["class_type"]]["output"]
    slot = next((i for i, kind in enumerate(outputs) if kind not in OPAQUE_OUTPUTS), 0)
    return {**graph, "sink": {"class_type": SINK, "inputs": {"source": [node_id, slot]}}}


def linked(graph: dict, node_id: str, name: str, kind: str, combo_source: str) -> dict:
    """`graph` with input `name` of `node_id` fed by a link that delivers its typed-in value."""
    graph = json.loads(json.dumps(graph))
    value = graph[node_id]["inputs"][name]
    if kind == "COMBO":
        graph["link_value"] = {"class_type": "PrimitiveString", "inputs": {"value": value}}
        graph["link_combo"] = {"class_type": combo_source, "inputs": {"string": ["link_value", 0]}}
        graph[node_id]["inputs"][name] = ["link_combo", 0]
    else:
        graph["link_value"] = {"class_type": PRIMITIVES[kind], "inputs": {"value": value}}
        graph[node_id]["inputs"][name] = ["link_value", 0]
    return graph


def sink_text(entry: dict) -> str:
    return ADDRESS.sub(" at 0x_", SAVE_COUNTER.sub("_N_", "\n".join(entry["outputs"]["sink"]["text"])))


def cached_nodes(entry: dict) -> list[str]:
    return next((m[1]["nodes"] for m in entry["status"]["messages"] if m[0] == "execution_cached"), [])


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_every_widget_input_of_every_pack_node_can_be_driven_by_a_link(comfy_server, object_info, ar_server):
    combo_source = next((name for name in COMBO_SOURCES if name in object_info), None)
    assert combo_source, f"none of {COMBO_SOURCES} is registered; server log:\n{comfy_server.log_tail()}"
    missing = [name for name in [*PRIMITIVES.values(), SINK] if name not in object_info]
    assert not missing, f"ComfyUI's core nodes {missing} are missing"
    for name in object_info[combo_source]["output"]:
        assert name == "COMBO", object_info[combo_source]
    nodes = pack_nodes(object_info)
    assert len(nodes) >= 10, nodes
    examples = example_prompts(object_info)

    failures, checked = [], []
    for class_type in nodes:
        graph, node_id = base_graph(class_type, object_info, examples)
        for node in graph.values():  # the server node samples on the tests' AR server (tests/serve_harness.py)
            if node["class_type"] == "GLMImageGenerateTokensServer":
                node["inputs"]["server_url"] = ar_server.url
        try:
            expected = sink_text(comfy_server.run(with_sink(graph, node_id, object_info), timeout=300))
        except ComfyError as err:
            failures.append(f"{class_type} does not run even with typed-in values: {str(err)[:1500]}")
            continue
        for name, kind in widget_inputs(object_info[class_type]):
            if name not in graph[node_id]["inputs"]:
                failures.append(f"{class_type}.{name}: the base graph has no value for it")
                continue
            prompt = with_sink(linked(graph, node_id, name, kind, combo_source), node_id, object_info)
            try:
                entry = comfy_server.run(prompt, timeout=300)
            except ComfyError as err:
                failures.append(f"{class_type}.{name} ({kind}) linked: {str(err)[:1500]}")
                continue
            if node_id in cached_nodes(entry):
                failures.append(f"{class_type}.{name}: the node did not run (cached) with the linked value")
            elif sink_text(entry) != expected:
                failures.append(f"{class_type}.{name}: linked run gave another result than the typed-in value:"
                                f"\n{sink_text(entry)[:400]}\n!=\n{expected[:400]}")
            checked.append(f"{class_type}.{name}")
    assert not failures, "\n\n".join(failures)
    widgets = sum(len(widget_inputs(object_info[n])) for n in nodes)
    assert len(checked) == widgets and widgets >= 30, checked
