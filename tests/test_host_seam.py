"""ComfyUI behind one seam (issue 17, section 2): the engine reaches its host only through memory.host.

Nothing under glmimage_core/ imports or looks up ComfyUI's modules, by any route (an import line, a name handed
to __import__ / import_module / find_spec, sys.modules); the ComfyUI host (glmimage_comfy.comfy_host) is
installed by the pack's entry point. In a process where ComfyUI's modules cannot be imported at all, the whole
engine imports and the command line's generate path runs without even trying to import one (outside ComfyUI a
lookup per sampled token was the seam's cost).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
#: ComfyUI's top-level modules (its server, its node API, its executor, its folders, its previews).
COMFY_MODULES = ("comfy", "comfy_api", "comfy_execution", "folder_paths", "server", "latent_preview")
_NAMES = "|".join(COMFY_MODULES)
LOOKUPS = [
    re.compile(rf"^\s*(?:import|from)\s+(?:{_NAMES})\b", re.M),  # import lines
    re.compile(rf"""(?:__import__|import_module|find_spec|_comfy_module)\s*\(\s*[rbfu]?["'](?:{_NAMES})\b"""),
    re.compile(rf"""sys\.modules\s*(?:\.get\s*\(|\[)\s*[rbfu]?["'](?:{_NAMES})\b"""),
    re.compile(r"\b_comfy_module\b"),  # the old call-time lookup helper
]


def comfy_lookups(text: str) -> list[str]:
    return [match.group(0).strip() for pattern in LOOKUPS for match in pattern.finditer(text)]


def test_the_lookup_patterns_catch_every_route_they_name():
    caught = comfy_lookups("import comfy.utils\nfrom folder_paths import x\n  import server\n"
                           "m = __import__('comfy.model_management', fromlist=['_'])\n"
                           "importlib.import_module(\"latent_preview\")\nsys.modules.get('comfy_execution')\n"
                           "mm = _comfy_module('comfy.ops')\n")
    assert len(caught) == 8, caught
    assert comfy_lookups("# comfy.ops.manual_cast is ComfyUI's\nx.comfy_cast_weights = True\nserverless = 1\n") == []


def test_nothing_under_glmimage_core_imports_or_looks_up_comfyui():
    found = {str(path.relative_to(REPO)): hits for path in sorted((REPO / "glmimage_core").rglob("*.py"))
             if (hits := comfy_lookups(path.read_text(encoding="utf-8")))}
    assert not found, f"ComfyUI looked up inside the engine (go through memory.host.host()): {found}"


BLOCKED_RUN = textwrap.dedent("""
    import importlib, pkgutil, sys
    BLOCKED = {blocked!r}
    tried = []

    class NoComfyUI:
        '''ComfyUI's modules cannot be imported here; every try is recorded.'''
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                tried.append(name)
                raise ImportError(f"{{name}} is made unimportable by the test")
            return None

    sys.meta_path.insert(0, NoComfyUI())
    sys.path.insert(0, {repo!r})
    import glmimage_core
    modules = [m.name for m in pkgutil.walk_packages(glmimage_core.__path__, "glmimage_core.")
               if m.name != "glmimage_core.__main__"]  # runs the command line on import
    for name in modules:
        importlib.import_module(name)
    from pathlib import Path
    from glmimage_core.cli import main
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout
    model = str(build_tiny_full_hub_layout(Path({out!r}) / "tiny-glm-image"))
    code = main(["generate", "--model", model, "--prompt", 'a sign that says "hi"', "--shape", "<sop>2 3<eop>", "--steps", "1",
                 "--dtype", "fp32", "--device", "cpu", "--out", {out!r}, "--name", "seam"])
    assert code == 0, code
    print("MODULES", len(modules))
    print("TRIED", sorted(set(tried)))
""")


def test_the_engine_imports_and_generates_where_comfyui_cannot_be_imported(tmp_path):
    """Every glmimage_core module imports, and `python -m glmimage_core generate` (on a tiny random model built
    there, tokens and a one-step decode) runs, with ComfyUI's modules unimportable; none of them is even tried."""
    code = BLOCKED_RUN.format(blocked=COMFY_MODULES, repo=str(REPO), out=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("MODULES", "TRIED")))
    assert int(lines["MODULES"]) > 30  # the whole engine, every room
    assert lines["TRIED"] == "[]", f"the engine tried to import ComfyUI: {lines['TRIED']}"
    written = {p.name for p in tmp_path.iterdir() if p.is_file()}
    assert {"seam_tokens.safetensors", "seam_tokens_preview.png", "seam.png"} <= written, written


def test_install_host_swaps_the_host_and_empties_the_model_caches(tiny_ar_dir):
    from glmimage_core.ar.loading import cached_models, load_ar_model
    from glmimage_core.memory import host as seam

    current = seam.host()  # PlainHost, or ComfyUI's where an in-process ComfyUI test ran first: put back after
    ar = load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")
    assert ar in cached_models()

    class CountingHost(seam.PlainHost):
        checks = 0

        def check_interrupted(self) -> None:
            CountingHost.checks += 1

    try:
        assert seam.install_host(CountingHost()) is current
        assert ar not in cached_models()  # prepared for the old host: dropped
        fresh = load_ar_model(str(tiny_ar_dir), dtype="fp32", device="cpu")
        from glmimage_core.ar.chat_prompt import prepare_inputs
        from glmimage_core.ar.generation import generate_tokens

        tokens = generate_tokens(fresh, prepare_inputs(fresh.processor, "x <sop>2 2<eop>"), seed=0)
        assert CountingHost.checks == tokens.sequences.shape[1]  # the cancel check: once per sampled token
    finally:
        seam.install_host(current)


def test_the_plain_host_is_the_default_outside_comfyui():
    code = "import glmimage_core.memory.host as h; print(type(h.host()).__name__, h.fp8_storage_possible())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.stdout.split() == ["PlainHost", "False"], done.stderr[-2000:]
