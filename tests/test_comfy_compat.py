"""Which ComfyUI this process runs against, and the API the pack takes from it.

scripts/run_tests.sh runs these twice: with .venv on ComfyUI 0.3.75 and with .venv-comfy033 on
ComfyUI 0.33.0 (GLMIMAGE_COMFYUI_DIR). The first test makes sure the 0.33.0 run really imported
0.33.0 and not some other tree on sys.path, so a run that says "0.33.0" has tested 0.33.0."""

import sys
from pathlib import Path

from tests.comfy_harness import comfyui_version
from tests.conftest import COMFYUI_DIR


def test_the_comfyui_imported_is_the_tree_under_test(comfy_pack):
    import comfy.model_management
    import comfyui_version as imported_version
    import folder_paths

    tree = COMFYUI_DIR.resolve()
    for module in (comfy.model_management, folder_paths, imported_version):
        assert tree in Path(module.__file__).resolve().parents, (module.__name__, module.__file__, tree)
    assert imported_version.__version__ == comfyui_version(COMFYUI_DIR)


def test_nodes_take_comfyuis_versioned_node_api(comfy_pack):
    """comfy_api.v0_0_2 is the API ComfyUI's maintainers ask packs to import (it stays stable while
    comfy_api.latest moves); both supported releases have it, so the fallback is never taken there."""
    import comfy_api.v0_0_2

    api = sys.modules[f"{comfy_pack.__name__}.nodes.api"]
    assert api.io is comfy_api.v0_0_2.io and api.ComfyExtension is comfy_api.v0_0_2.ComfyExtension
