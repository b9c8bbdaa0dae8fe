"""A real ComfyUI server for the integration tests (see tests/comfy_harness.py).

The ComfyUI tree comes from scripts/setup_env.sh; without it these tests FAIL (they are the pack
inside ComfyUI, the thing users run). GLMIMAGE_SKIP_COMFY=1 skips them on request."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyError, ComfyServer, comfyui_missing_reason

TINY_AR_NAME = "tiny-glm-image"  # an AR model alone (build_tiny_ar_model)
FULL_MODEL_NAME = "GLM-Image"    # AR + decoder in the hub layout: the folder the example workflows name
TEST_NODES = Path(__file__).parent / "comfy_test_nodes"  # test-only helper nodes (see its docstring)


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI (--cpu) with this pack linked into custom_nodes, a tiny GLM-Image (AR + decoder)
    in models/glm_image/GLM-Image, a tiny AR model alone in models/glm_image/tiny-glm-image, and an
    input/example.png. Started once per session, stopped at its end."""
    if os.environ.get("GLMIMAGE_SKIP_COMFY") == "1":
        pytest.skip("GLMIMAGE_SKIP_COMFY=1: ComfyUI server tests skipped on request")
    reason = comfyui_missing_reason()
    if reason:
        pytest.fail(reason, pytrace=False)
    from glmimage_core.demo_decoder import build_tiny_full_hub_layout
    from glmimage_core.demo_models import build_tiny_ar_model

    server = ComfyServer(tmp_path_factory.mktemp("comfy"))
    (server.base / "custom_nodes" / TEST_NODES.name).symlink_to(TEST_NODES, target_is_directory=True)
    server.add_model(FULL_MODEL_NAME, build_tiny_full_hub_layout)
    server.add_model(TINY_AR_NAME, build_tiny_ar_model)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(server.input_dir / "example.png")
    try:
        server.start()
    except ComfyError as err:
        pytest.fail(f"ComfyUI did not start: {err}", pytrace=False)
    yield server
    server.stop()
