import os

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import ComfyServer


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """A real ComfyUI (--cpu) with this pack linked in and a tiny GLM-Image (AR + decoder) in
    models/glm_image/GLM-Image, the folder name the example workflows use."""
    if os.environ.get("GLMIMAGE_SKIP_COMFY") == "1":
        pytest.skip("GLMIMAGE_SKIP_COMFY=1: ComfyUI server tests skipped on request")
    from glmimage_core.demo_decoder import build_tiny_full_hub_layout

    base = tmp_path_factory.mktemp("comfy")
    server = ComfyServer(base)
    build_tiny_full_hub_layout(server.models_dir / "GLM-Image")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(server.input_dir / "example.png")
    server.start()
    yield server
    server.stop()
