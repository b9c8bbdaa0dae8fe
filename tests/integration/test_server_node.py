"""'GLM-Image generate tokens (server)' inside a real ComfyUI, against the tests' real vLLM-Omni AR server
(tests/conftest.py's `ar_server`): the example workflow runs and decodes; a wrong URL fails fast naming it and
ComfyUI goes on serving; ComfyUI's cancel aborts the request on the AR server (which stops computing).

The ComfyUI process inherits GLMIMAGE_SERVER_API_KEY from the tests (tests/conftest.py), as a user's would
from their shell: the key is never in the workflow.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest

from tests.comfy_harness import ComfyError, node_id, workflow_to_api_prompt
from tests.serve_harness import free_port

WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_text_to_image_server.json"
NODE = "GLMImageGenerateTokensServer"


@pytest.fixture(scope="module")
def server_prompt(comfy_server, ar_server):
    """The example workflow as an API prompt, its server_url pointing at the tests' AR server."""
    prompt = workflow_to_api_prompt(json.loads(WORKFLOW.read_text()), comfy_server.object_info())
    prompt[node_id(prompt, NODE)]["inputs"]["server_url"] = ar_server.url
    return prompt


def _with(prompt: dict, **inputs) -> dict:
    prompt = json.loads(json.dumps(prompt))
    prompt[node_id(prompt, NODE)]["inputs"].update(inputs)
    return prompt


def test_the_server_node_is_registered_with_tooltips(comfy_server):
    info = comfy_server.object_info()[NODE]
    assert info["display_name"] == "GLM-Image generate tokens (server)" and info["category"] == "GLM-Image"
    required = info["input"]["required"]
    assert list(required) == ["inputs", "seed", "images", "do_sample", "temperature", "top_p", "top_k", "server_url"]
    assert all(spec[1].get("tooltip") for spec in required.values())
    assert required["server_url"][1]["default"] == "http://127.0.0.1:8000"


def test_example_server_workflow_runs_against_the_ar_server_and_decodes(comfy_server, server_prompt):
    entry = comfy_server.run(server_prompt)
    images = comfy_server.output_images(entry)
    assert len(images) == 2 and all(p.is_file() for p in images), entry["outputs"]
    assert any("tokens_preview" in p.name for p in images) and any("tokens_preview" not in p.name for p in images)


def test_a_wrong_url_fails_within_seconds_naming_it_and_comfyui_keeps_serving(comfy_server, server_prompt):
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ComfyError, match=f"no AR server answers at {url}"):
        comfy_server.run(_with(server_prompt, server_url=url), timeout=120)
    assert time.monotonic() - t0 < 15  # ~10 s for the node, plus ComfyUI's own bookkeeping
    small = _with(server_prompt, seed=3)  # the next prompt, same ComfyUI: served
    assert len(comfy_server.output_images(comfy_server.run(small))) == 2


def test_comfyui_cancel_aborts_the_request_on_the_ar_server(comfy_server, server_prompt, ar_server):
    prompt = _with(server_prompt, seed=99, images=4)  # 4 x 1281 tokens: long enough to cancel in the middle
    prompt_id = comfy_server.queue_prompt(prompt)
    deadline = time.monotonic() + 120
    start = ar_server.cpu_seconds()
    while ar_server.cpu_seconds() - start < 1.0 and time.monotonic() < deadline:  # the server is sampling
        time.sleep(0.2)
    request = urllib.request.Request(comfy_server.url + "/interrupt", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()  # the editor's Cancel button (answers no JSON)
    with pytest.raises(ComfyError, match="interrupted"):
        comfy_server.wait_for(prompt_id, timeout=60)
    time.sleep(1.0)
    before, t0 = ar_server.cpu_seconds(), time.monotonic()
    time.sleep(2.0)
    rate = (ar_server.cpu_seconds() - before) / (time.monotonic() - t0)
    assert rate < 0.35, f"the AR server still computes after ComfyUI's cancel ({rate:.2f} CPU s/s)"
