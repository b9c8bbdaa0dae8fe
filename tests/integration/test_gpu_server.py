"""Every example workflow in a real ComfyUI server on the GPU, in the three VRAM modes users run.

Marked `cuda` (skips without a GPU). scripts/gpu_check.sh runs it on the device machine with ComfyUI 0.33.0
(GLMIMAGE_COMFYUI_DIR) and the Python that holds the bundle; the server is started without --cpu
(ComfyServer(device="gpu")), once per mode:
  dynamic       ComfyUI 0.33's default on NVIDIA: dynamic VRAM (comfy-aimdo)
  static        --disable-dynamic-vram: ComfyUI's classic model loading
  lowvram-fp8   --lowvram, and every loader's weight_dtype set to fp8_e4m3fn (the small-card path)
Models: the tiny random GLM-Image (AR + decoder) the CPU server tests use, and its fp8 single files (the
single-files workflow: fp8 files loaded and run on the GPU). GLMIMAGE_CUDA_TESTS_ON_CPU=1 runs
the same on the CPU (--cpu), for the GPU check's dry run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyError, ComfyServer, comfyui_dir, workflow_to_api_prompt
from tests.cuda_marks import CUDA_ONLY, DEVICE
from tests.integration.conftest import write_single_files

pytestmark = CUDA_ONLY
# The AR-server example needs a vLLM-Omni server beside ComfyUI: tests/integration/test_server_node.py runs it
# (on the CPU, against the tests' own server); the GPU check has no such server.
WORKFLOWS = sorted(p for p in (Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json")
                   if not p.stem.endswith("_server"))
MODES = {"dynamic": [], "static": ["--disable-dynamic-vram"], "lowvram-fp8": ["--lowvram"]}


@pytest.fixture(scope="module", params=list(MODES), ids=list(MODES))
def gpu_server(request, tmp_path_factory):
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout

    mode = request.param
    device = "gpu" if DEVICE == "cuda" else "cpu"
    server = ComfyServer(tmp_path_factory.mktemp(f"gpu-{mode}"), comfy_dir=comfyui_dir(), python=sys.executable,
                         device=device)
    flags = [f for f in MODES[mode] if device == "gpu" or f != "--lowvram"]  # main.py refuses --cpu with --lowvram
    server.add_model("GLM-Image", build_tiny_full_hub_layout)
    write_single_files(server.model_path("GLM-Image"), server.base / "models")  # the single-files workflow's
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(server.input_dir / "example.png")
    front_end = server.base / "frontend"  # an empty editor: the bundle leaves comfyui-frontend-package out
    front_end.mkdir()
    try:
        server.start(extra_args=["--front-end-root", str(front_end), *flags])
    except ComfyError as err:
        pytest.fail(f"ComfyUI ({comfyui_dir()}, mode {mode}) did not start: {err}", pytrace=False)
    yield mode, server
    server.stop()


def with_fp8_weights(prompt: dict) -> dict:
    """Every loader that has a weight_dtype input (AR, decoder, DiT) set to fp8_e4m3fn."""
    changed = 0
    for node in prompt.values():
        if "weight_dtype" in node["inputs"]:
            node["inputs"]["weight_dtype"] = "fp8_e4m3fn"
            changed += 1
    return prompt if changed else pytest.fail("no loader with weight_dtype in the workflow")


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs_on_the_gpu(gpu_server, workflow):
    mode, server = gpu_server
    prompt = workflow_to_api_prompt(json.loads(workflow.read_text()), server.object_info())
    if mode == "lowvram-fp8":
        prompt = with_fp8_weights(prompt)
    entry = server.run(prompt, timeout=240)
    paths = server.output_images(entry)
    assert len(paths) == 2, entry["outputs"]
    for path in paths:
        with Image.open(path) as picture:
            assert picture.size[0] >= 32 and picture.size[1] >= 32
            assert np.asarray(picture.convert("RGB")).std() > 1  # not a blank picture
    log = server.log_path.read_text(errors="replace")
    if DEVICE == "cuda":
        assert "Device: cuda" in log, log[-3000:]
