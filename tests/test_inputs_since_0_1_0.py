"""Inputs added to a node after a release are optional, and the node's execute() has a default for them.

An API prompt saved with a release names only the inputs its nodes had then (tests/fixtures/workflows/
<version>/api/, the editor's own export). Each input a pack node has now and such a prompt lacks must be
optional in the schema (or ComfyUI refuses the prompt: 'Required input is missing') and have a default
in execute() (ComfyUI leaves an absent optional input out of the call). The server test
tests/integration/test_saved_workflows.py runs those prompts; this names the input without a server."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "workflows"


def saved_inputs() -> dict[str, set[str]]:
    """class_type -> the input names the oldest release's API prompts give its pack nodes (the union)."""
    out: dict[str, set[str]] = {}
    for path in sorted((FIXTURES / "0.1.0" / "api").glob("*.json")):
        for node in json.loads(path.read_text()).values():
            if node["class_type"].startswith("GLMImage"):
                out.setdefault(node["class_type"], set()).update(node["inputs"])
    return out


@pytest.fixture(scope="module")
def node_classes(comfy_pack):
    import sys

    return {cls.define_schema().node_id: cls for cls in sys.modules[f"{comfy_pack.__name__}.nodes"].NODES}


def test_inputs_added_since_0_1_0_are_optional_with_a_default(node_classes):
    saved = saved_inputs()
    assert {"GLMImageARLoader", "GLMImageGenerateTokens", "GLMImageDecoderLoader", "GLMImageLoadTokens"} <= set(saved)
    added = []
    for class_type, names in saved.items():
        cls = node_classes[class_type]
        params = inspect.signature(cls.execute).parameters
        for spec in cls.define_schema().inputs:
            if spec.id in names:
                continue
            added.append(f"{class_type}.{spec.id}")
            assert spec.optional, f"{class_type}.{spec.id} was added after 0.1.0 but is required"
            assert params[spec.id].default is not inspect.Parameter.empty, f"{class_type}.execute: no default for {spec.id}"
    # what 0.2.0 added to 0.1.0's nodes (a later release adds to this list only by adding optional inputs)
    assert {"GLMImageARLoader.weight_dtype", "GLMImageGenerateTokens.allow_streaming",
            "GLMImageDecoderLoader.weight_dtype", "GLMImageDecoderLoader.vram_limit_gb",
            "GLMImageLoadTokens.token_file"} <= set(added), added


def test_load_tokens_without_token_file_or_file_names_both(node_classes):
    from glmimage_core.errors import GlmImageInputError

    with pytest.raises(Exception, match=r"token_file: choose a token file, or connect 'file'") as err:
        node_classes["GLMImageLoadTokens"].execute()
    assert type(err.value).__name__ == GlmImageInputError.__name__
