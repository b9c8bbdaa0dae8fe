"""Shared fixtures: tiny GLM-Image models built once per session, and the pack imported as ComfyUI does."""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("GLMIMAGE_COMFYUI_DIR", REPO / ".cache" / "comfyui"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


INPROCESS_MARKER = "comfyui_inprocess"
SERVER_MARKER = "comfyui_server"
CUDA_MARKER = "cuda"
#: "gpu" lets the in-process ComfyUI (comfy_pack) pick the GPU: scripts/gpu_check.py sets it for the cuda tests.
COMFY_DEVICE = os.environ.get("GLMIMAGE_COMFY_DEVICE", "cpu")


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # scripts/run_tests.sh stops its background ComfyUI 0.33.0 run with SIGTERM; as an interrupt, pytest
    # still runs its fixtures' teardown, which stops the ComfyUI servers (they run in sessions of their
    # own, so no signal sent to the test run reaches them).
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    config.addinivalue_line(
        "markers", f"{INPROCESS_MARKER}: the test imports ComfyUI's modules into this process (it uses the "
                   "comfy_pack fixture); scripts/run_tests.sh runs these tests on ComfyUI 0.33.0 as well")
    config.addinivalue_line(
        "markers", f"{SERVER_MARKER}: the test drives a real ComfyUI server (it uses the comfy_server "
                   "fixture); scripts/run_tests.sh runs these tests on ComfyUI 0.33.0 as well")
    config.addinivalue_line(
        "markers", f"{CUDA_MARKER}: the test checks a CUDA GPU path (tests/test_cuda.py); it skips, saying so, "
                   "without a GPU; scripts/gpu_check.sh runs them on the device machine (-m cuda)")


def pytest_collection_modifyitems(config, items):
    """Mark every test that touches ComfyUI (in-process, or through a server), so the ComfyUI 0.33.0
    run of scripts/run_tests.sh (its own venv) picks them by marker: a new test that uses
    `comfy_pack` or `comfy_server` is included there without anyone listing it."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "comfy_pack" in names:
            item.add_marker(INPROCESS_MARKER)
        if "comfy_server" in names:
            item.add_marker(SERVER_MARKER)


@pytest.fixture(scope="session")
def tiny_ar_dir(tmp_path_factory) -> Path:
    from glmimage_core.demo.models import build_tiny_ar_model

    return build_tiny_ar_model(tmp_path_factory.mktemp("models") / "tiny-ar")


@pytest.fixture(scope="session")
def tiny_hub_dir(tmp_path_factory) -> Path:
    from glmimage_core.demo.models import build_tiny_hub_layout

    return build_tiny_hub_layout(tmp_path_factory.mktemp("models") / "tiny-hub")


@pytest.fixture(scope="session")
def ar(tiny_ar_dir):
    from glmimage_core.ar.loading import load_ar_model

    return load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def comfy_pack():
    """The pack imported the way ComfyUI imports a custom node folder (as a package), with
    ComfyUI's own `comfy_api` importable. Needs scripts/setup_env.sh to have fetched ComfyUI."""
    if not (COMFYUI_DIR / "comfy_api").is_dir():
        pytest.fail(f"ComfyUI not found at {COMFYUI_DIR}: run scripts/setup_env.sh (or set GLMIMAGE_COMFYUI_DIR)")
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.insert(0, str(COMFYUI_DIR))
    from comfy.cli_args import args  # what `main.py --cpu` sets before anything touches a device

    args.cpu = COMFY_DEVICE != "gpu"  # GLMIMAGE_COMFY_DEVICE=gpu: ComfyUI picks the GPU (the cuda tests)
    name = "comfyui_glm_image_pack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{name}.nodes")
    return module
