"""The real ComfyUI server itself answers, and (once the pack exists) lists the pack's nodes."""

import json
import subprocess

import pytest

from tests.comfy_harness import REPO, comfyui_version, input_specs
from tests.integration.conftest import FULL_MODEL_NAME, TINY_AR_NAME

needs_pack = pytest.mark.skipif(not (REPO / "__init__.py").is_file(),
                                reason="the pack's __init__.py does not exist yet: no nodes to look for")


def _torch_version(python: str) -> str:
    """torch's version in the venv of `python` (the two ComfyUIs run on different torch releases)."""
    return subprocess.run([python, "-c", "import torch; print(torch.version.__version__)"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_server_answers_and_lists_comfyuis_own_nodes(comfy_server, comfy_target, object_info):
    stats = comfy_server.get("/system_stats")
    # The server is the ComfyUI this test id names, run by the Python of the venv made for it.
    assert stats["system"]["comfyui_version"] == comfyui_version(comfy_target.comfy_dir), stats
    assert stats["system"]["pytorch_version"] == _torch_version(comfy_target.python), stats
    assert [d["type"] for d in stats["devices"]] == ["cpu"], stats["devices"]  # started with --cpu
    assert "SaveImage" in object_info and "LoadImage" in object_info, sorted(object_info)[:20]
    assert object_info["SaveImage"]["output_node"] is True


def test_server_runs_a_prompt_of_core_nodes(comfy_server, object_info):
    """The harness end to end on ComfyUI's own nodes: LoadImage -> ImageScale -> SaveImage."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                      "width": 64, "height": 48, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "smoke"}},
    }
    entry = comfy_server.run(prompt, timeout=120)
    paths = comfy_server.output_images(entry)
    assert len(paths) == 1 and paths[0].is_file() and paths[0].name.startswith("smoke")


def test_a_failing_prompt_raises_with_the_error(comfy_server):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "no-such-file.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(Exception, match="no-such-file.png"):
        comfy_server.run(prompt, timeout=60)


@needs_pack
def test_pack_loaded_without_import_errors(comfy_server, object_info):
    log = comfy_server.log_tail(200_000)
    assert "GLMImageARLoader" in object_info, f"pack nodes missing; server log:\n{log[-6000:]}"
    assert "IMPORT FAILED" not in "".join(l for l in log.splitlines() if "GLM-Image" in l), log[-6000:]


@needs_pack
def test_ar_loader_is_listed_in_the_glm_image_category_with_the_placed_models(object_info):
    info = object_info["GLMImageARLoader"]
    assert info["category"].startswith("GLM-Image"), info["category"]
    model_input = dict((name, (kind, options)) for name, kind, options in input_specs(info)).get("model")
    assert model_input is not None, info["input"]
    listed = json.dumps(model_input)
    assert FULL_MODEL_NAME in listed and TINY_AR_NAME in listed, listed
