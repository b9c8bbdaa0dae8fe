"""A real ComfyUI server for the integration tests (see tests/comfy_harness.py), once per ComfyUI.

Every test here runs against each ComfyUI of `comfy_targets()`: 0.3.75 (the oldest the pack
supports, .cache/comfyui) and 0.33.0 (a 2026 release, .cache/comfyui-0.33.0 run with
.venv-comfy033's Python); the test ids say which, e.g. `[comfyui-0.33.0]`. (scripts/run_tests.sh
runs the 0.33.0 ones in a pytest run of its own, on .venv-comfy033, beside the 0.3.75 run.)

The 0.3.75 tree comes from scripts/setup_env.sh; without it these tests FAIL (they are the pack
inside ComfyUI, the thing users run). ComfyUI 0.33.0 needs a source snapshot that is not on the
package index: when it could not be set up (no snapshot), its tests SKIP with the reason
(`pytest -rs` shows it). GLMIMAGE_SKIP_COMFY=1 skips all of them on request."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.comfy_harness import COMFY033_VERSION, ComfyError, ComfyServer, comfy_targets, unpack_comfyui_gguf

TINY_AR_NAME = "tiny-glm-image"  # an AR model alone (build_tiny_ar_model)
FULL_MODEL_NAME = "GLM-Image"    # AR + decoder in the hub layout: the folder the example workflows name
TEST_NODES = Path(__file__).parent / "comfy_test_nodes"  # test-only helper nodes (see its docstring)
#: In models/loras: a diffusers/PEFT LoRA of the tiny DiT whose lora_alpha (2 x r) is in its metadata only.
PEFT_LORA_NAME = "glm_image_peft_alpha.safetensors"


def write_peft_lora(loras: Path, transformer: Path) -> None:
    """The LoRA file as diffusers 0.42.1 writes it (LoraBaseMixin._save_lora_weights: weights prefixed
    'transformer.', r and lora_alpha as JSON in the metadata 'lora_adapter_metadata'), so that the LoRA
    loader nodes have a real file to list and apply."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    from glmimage_core.demo.decoder import random_lora

    layers = random_lora(transformer, ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"), seed=1)
    loras.mkdir(parents=True, exist_ok=True)
    LoraBaseMixin._save_lora_weights(save_directory=str(loras), lora_layers={"transformer": layers},
                                     lora_metadata={"transformer": {"r": 4, "lora_alpha": 8}},
                                     weight_name=PEFT_LORA_NAME)

def write_single_files(hub: Path, models: Path) -> None:
    """The fp8 single files the single-files example workflow names (and the VAE / glyph encoder in bf16), in
    ComfyUI's folders, as `python -m glmimage_core convert --format fp8_e4m3fn` writes them."""
    from glmimage_core.weights import convert, formats

    dirs = {part: models / convert.COMFY_FOLDERS[part] for part in formats.PARTS}
    convert.convert(hub, list(formats.PARTS), dirs, "fp8_e4m3fn", "comfy_quant")


TARGETS = comfy_targets()


@pytest.fixture(scope="session", params=TARGETS, ids=[t.name for t in TARGETS])
def comfy_target(request):
    """The ComfyUI (tree + Python) this run of a test is for."""
    return request.param


@pytest.fixture(scope="session")
def comfy_server(comfy_target, tmp_path_factory):
    """A real ComfyUI (--cpu) with this pack linked into custom_nodes, a tiny GLM-Image (AR + decoder)
    in models/glm_image/GLM-Image, a tiny AR model alone in models/glm_image/tiny-glm-image, and an
    input/example.png. Started once per ComfyUI version, stopped before the next one starts."""
    if os.environ.get("GLMIMAGE_SKIP_COMFY") == "1":
        pytest.skip("GLMIMAGE_SKIP_COMFY=1: ComfyUI server tests skipped on request")
    if comfy_target.missing:
        if comfy_target.name == f"comfyui-{COMFY033_VERSION}" and comfy_target is not TARGETS[0]:
            pytest.skip(comfy_target.missing)  # optional: needs a snapshot that is not on the index
        pytest.fail(comfy_target.missing, pytrace=False)
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout
    from glmimage_core.demo.models import build_tiny_ar_model

    server = ComfyServer(tmp_path_factory.mktemp(comfy_target.name), comfy_dir=comfy_target.comfy_dir,
                         python=comfy_target.python)
    (server.base / "custom_nodes" / TEST_NODES.name).symlink_to(TEST_NODES, target_is_directory=True)
    unpack_comfyui_gguf(server.base / "custom_nodes")  # GGUF files load through it (test_gguf_server.py)
    server.add_model(FULL_MODEL_NAME, build_tiny_full_hub_layout)
    server.add_model(TINY_AR_NAME, build_tiny_ar_model)
    write_peft_lora(server.base / "models" / "loras", server.model_path(FULL_MODEL_NAME) / "transformer")
    write_single_files(server.model_path(FULL_MODEL_NAME), server.base / "models")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (192, 256, 3), dtype=np.uint8)).save(server.input_dir / "example.png")
    try:
        # Latent previews as a user who turned them on sees them (ComfyUI's default is none); the token
        # preview of the generate node does not depend on it. test_native_server.py relies on this.
        server.start(extra_args=["--preview-method", "latent2rgb"])
    except ComfyError as err:
        pytest.fail(f"ComfyUI ({comfy_target.name}, {comfy_target.python}) did not start: {err}", pytrace=False)
    yield server
    server.stop()
