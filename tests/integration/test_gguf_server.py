"""GGUF files of the AR model and the DiT in a real ComfyUI server (0.3.75 and 0.33.0), with ComfyUI-GGUF
unpacked into its custom_nodes (tests/integration/conftest.py) and loaded by ComfyUI itself, as users have it.

The example KSampler workflow runs with its AR loader and its DiT loader pointed at GGUF files in ComfyUI's
text_encoders/ and diffusion_models/ folders (made by the pack's convert from the server's tiny model); the
server log shows ComfyUI-GGUF's loader reading both files (its "gguf qtypes" line). Numbers against bf16 are
tests/test_gguf.py's (in-process, same code)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.comfy_harness import workflow_to_api_prompt
from tests.integration.conftest import FULL_MODEL_NAME

WORKFLOW = Path(__file__).resolve().parents[2] / "example_workflows" / "glm_image_ksampler.json"
FAST = {"GLMImageShape": {"width": 128, "height": 96, "tag": "<sop>3 4<eop>"}, "KSampler": {"steps": 2}}


@pytest.fixture
def gguf_files(comfy_server) -> dict:
    pytest.importorskip("gguf", reason="the package gguf (requirements.txt) is not installed")
    from glmimage_core.weights import convert

    models = comfy_server.base / "models"
    made = {}
    for part, q in (("ar", "q4_0"), ("dit", "q8_0")):
        folder = models / convert.COMFY_FOLDERS[part]
        target = folder / convert.default_name(part, f"gguf_{q}")
        if not target.exists():
            convert.convert_part(comfy_server.model_path(FULL_MODEL_NAME), part, folder, f"gguf_{q}")
        made[part] = target.name
    return made


def test_ksampler_workflow_runs_on_gguf_files_through_comfyui_gguf(comfy_server, gguf_files):
    info = comfy_server.object_info()
    assert "UnetLoaderGGUF" in info, "ComfyUI-GGUF did not load in the test server:\n" + comfy_server.log_tail()
    for class_type, part in (("GLMImageARLoader", "ar"), ("GLMImageDiTLoader", "dit")):
        spec = info[class_type]["input"]["required"]["model"]
        options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]
        assert gguf_files[part] in options, (class_type, options)  # the loaders list .gguf files
    combo = next(n for n in ("ConvertStringToComboNode", "LinkTestStringToCombo") if n in info)
    prompt = workflow_to_api_prompt(json.loads(WORKFLOW.read_text()), info)
    for node in prompt.values():
        node["inputs"].update(FAST.get(node["class_type"], {}))
    for class_type, part in (("GLMImageARLoader", "ar"), ("GLMImageDiTLoader", "dit")):
        node_id = next(nid for nid, node in prompt.items() if node["class_type"] == class_type)
        prompt[f"gguf_{part}"] = {"class_type": combo, "inputs": {"string": gguf_files[part]}}
        prompt[node_id]["inputs"]["model"] = [f"gguf_{part}", 0]
    log_before = comfy_server.log_path.read_text(errors="replace")
    entry = comfy_server.run(prompt)
    images = comfy_server.output_images(entry)
    assert any("glm_image_ksampler_" in p.name for p in images) and all(p.is_file() for p in images)
    new_log = comfy_server.log_path.read_text(errors="replace")[len(log_before):]
    qtypes = re.findall(r"gguf qtypes: ([^\n]+)", new_log)
    assert any("Q4_0" in line for line in qtypes) and any("Q8_0" in line for line in qtypes), new_log[-3000:]
