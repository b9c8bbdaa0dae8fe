"""The server (glmimage_serve/http_front.py, vLLM's environment) and the client (glmimage_core/ar/remote_http.py,
ComfyUI's) share no import, only the protocol: its paths and the API key's variable must be spelt alike.
Read from the server's source (it imports FastAPI, which ComfyUI's environment need not have)."""

import ast
import re
from pathlib import Path

from glmimage_core.ar import remote_http

SERVER = Path(__file__).resolve().parents[1] / "glmimage_serve" / "http_front.py"
SHARED = ("API_KEY_ENV", "HEALTH_PATH", "INFO_PATH", "GENERATE_PATH")


def test_client_and_server_speak_the_same_protocol():
    values = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(SERVER.read_text()).body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
              and node.targets[0].id in SHARED}
    assert values == {name: getattr(remote_http, name) for name in SHARED}


def test_nothing_of_the_pack_imports_the_server_package():
    root = SERVER.parents[1]
    for folder in ("glmimage_core", "glmimage_comfy", "nodes"):
        for path in (root / folder).rglob("*.py"):
            imports = re.search(r"^\s*(from\s+[.]*glmimage_serve|import\s+glmimage_serve)", path.read_text(), re.M)
            assert not imports, f"{path} imports glmimage_serve (it runs in vLLM's venv only)"


def test_the_processor_loader_reads_no_weights_and_the_local_node_refuses_it(ar, tiny_ar_dir):
    import pytest

    from glmimage_core.ar.chat_prompt import prepare_inputs
    from glmimage_core.ar.generation import generate_tokens
    from glmimage_core.ar.loading import load_ar_processor
    from glmimage_core.errors import GlmImageInputError

    shell = load_ar_processor(str(tiny_ar_dir))
    assert shell.identity() == ar.identity()
    assert all(p.device.type == "meta" for p in shell.model.parameters())
    inputs = prepare_inputs(shell.processor, "a cat")
    assert inputs.model_inputs["input_ids"].equal(prepare_inputs(ar.processor, "a cat").model_inputs["input_ids"])
    with pytest.raises(GlmImageInputError, match="generate tokens \\(server\\)"):
        generate_tokens(shell, inputs)


def test_the_plugin_is_declared_for_vllm_omni_and_for_vllm_s_engine_core(tmp_path):
    """vLLM's engine core (the scheduler) loads only `vllm.general_plugins`: without the plugin there it does
    not know the served model class, runs text-only, and an image-to-image request waits forever."""
    from importlib.metadata import distributions

    from glmimage_serve.install import install

    install(tmp_path)
    (dist,) = [d for d in distributions(path=[str(tmp_path)]) if d.metadata["Name"] == "glmimage-serve"]
    declared = {(ep.group, ep.name, ep.value) for ep in dist.entry_points}
    assert declared == {(group, "glmimage_serve", "glmimage_serve.plugin:register")
                        for group in ("vllm_omni.general_plugins", "vllm.general_plugins")}
    assert (tmp_path / "glmimage_serve_repo.pth").read_text().strip() == str(SERVER.parents[1])
