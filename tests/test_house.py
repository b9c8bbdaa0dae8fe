"""House rules the code review asked for, kept by a test so that they do not drift again (issue 13, section 5):
small modules with one job each, what travels between nodes in one module, one place per idea."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_NODE_LINES = 120  # a node file is a schema and a call into the core
MAX_MODULE_LINES = 400  # engine and native-model modules


def line_counts(folder: str) -> dict[str, int]:
    return {str(path.relative_to(REPO / folder)): len(path.read_text(encoding="utf-8").splitlines())
            for path in (REPO / folder).rglob("*.py")}


def test_node_files_stay_thin_and_modules_small():
    big_nodes = {name: n for name, n in line_counts("nodes").items() if n > MAX_NODE_LINES}
    assert not big_nodes, f"node files over {MAX_NODE_LINES} lines (move helpers out): {big_nodes}"
    for folder in ("glmimage_core", "glmimage_comfy"):
        big = {name: n for name, n in line_counts(folder).items() if n > MAX_MODULE_LINES}
        assert not big, f"{folder} modules over {MAX_MODULE_LINES} lines (split them by job): {big}"


def test_socket_payloads_come_from_one_module():
    """Every custom socket's dataclass lives in glmimage_core.payloads, and sockets.py says so."""
    sockets = (REPO / "nodes" / "sockets.py").read_text(encoding="utf-8")
    named = set(re.findall(r"# glmimage_core\.(\w+)\.", sockets))
    assert named == {"payloads"}, named


def test_one_safetensors_header_reader_and_one_pixels_per_token():
    core = {str(path.relative_to(REPO / "glmimage_core")): path.read_text(encoding="utf-8")
            for path in (REPO / "glmimage_core").rglob("*.py")}
    readers = [name for name, text in core.items() if 'struct.unpack("<Q"' in text or "int.from_bytes(f.read(" in text]
    assert readers == ["weights/files.py"], readers
    defined = [name for name, text in core.items() if re.search(r"^PIXELS_PER_TOKEN\s*=", text, re.M)]
    assert len(defined) == 1, defined


def test_weight_dtype_is_turned_into_a_dtype_in_one_place():
    """The loaders turn `weight_dtype` into a storage dtype (with its checks) through cast_layers.parse_weight_dtype
    only: no module parses or checks it on its own."""
    users = [str(path.relative_to(REPO)) for folder in ("glmimage_core", "glmimage_comfy", "nodes")
             for path in (REPO / folder).rglob("*.py")
             if "resolve_weight_dtype(" in path.read_text(encoding="utf-8") and path.name != "cast_layers.py"]
    assert not users, users


# --- Issue 17: rooms by stage -------------------------------------------------------------------------------------

PRODUCT = ("glmimage_core", "glmimage_comfy", "nodes")
BUILDERS = "glmimage_core/demo"  # tiny / real-size random models for tests, benchmarks and the demo


def python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((REPO / folder).rglob("*.py"))]


def imported_modules(path: Path) -> set[str]:
    """Absolute dotted names (under the pack, without its own name) that `path` imports, relative imports resolved."""
    import ast

    rel = path.relative_to(REPO).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_builders_room_is_imported_by_no_product_module():
    users = [str(path.relative_to(REPO)) for path in python_files(*PRODUCT)
             if not str(path.relative_to(REPO)).startswith(BUILDERS)
             and any(name == "glmimage_core.demo" or name.startswith("glmimage_core.demo.")
                     for name in imported_modules(path))]
    assert not users, f"product modules importing the test/bench model builders ({BUILDERS}/): {users}"


def test_payloads_import_no_behaviour_module():
    """What travels between nodes is data: payloads.py imports only what every stage shares (errors, shapes,
    images, dtypes), never a stage's behaviour (the VRAM plan, loading, generation, sampling, ComfyUI)."""
    shared = {"glmimage_core.errors", "glmimage_core.shapes", "glmimage_core.images", "glmimage_core.dtypes"}
    ours = {name for name in imported_modules(REPO / "glmimage_core" / "payloads.py")
            if name.split(".")[0] in PRODUCT and name != "glmimage_core"}
    behaviour = sorted(name for name in ours if name not in shared and name.rsplit(".", 1)[0] not in shared)
    assert not behaviour, f"payloads.py imports behaviour modules: {behaviour}"


NOT_IN_THE_ENGINE = ("comfy", "folder_paths", "server", "comfy_execution", "latent_preview", "comfy_api")


def test_the_engine_names_no_comfyui_module():
    """ComfyUI reaches the engine only through the host that glmimage_comfy installs: no module under
    glmimage_core/ imports ComfyUI or looks it up by name (the import test in test_host_seam runs it without)."""
    import re as _re

    # import lines, and dotted module names in strings ("comfy.model_management"); a name looked up bare through
    # __import__ / import_module / sys.modules is test_host_seam's (a bare "comfy" may be a file label here)
    pattern = _re.compile(r"""(^\s*(from|import)\s+(%s)\b)|(["'](%s)\.[\w.]+["'])""" % (
        "|".join(NOT_IN_THE_ENGINE), "|".join(NOT_IN_THE_ENGINE)), _re.M)
    found = {str(path.relative_to(REPO)): sorted({m.group(0).strip() for m in pattern.finditer(
        path.read_text(encoding="utf-8"))}) for path in python_files("glmimage_core")}
    found = {name: hits for name, hits in found.items() if hits}
    assert not found, f"ComfyUI named inside the engine: {found}"


def test_no_two_files_share_a_name_across_layers():
    """The engine, the native ComfyUI models and the nodes each name their files for their own job: a name used
    at two layers (conditioning.py, token_files.py before 0.2.1) makes a newcomer open the wrong one."""
    layers = {folder: {path.name for path in python_files(folder) if path.name not in ("__init__.py", "__main__.py")}
              for folder in PRODUCT}
    clashes = {name: [folder for folder in PRODUCT if name in layers[folder]]
               for name in set().union(*layers.values())}
    clashes = {name: where for name, where in clashes.items() if len(where) > 1}
    assert not clashes, f"file names used at two layers: {clashes}"


def test_the_engine_is_in_rooms_by_stage():
    """glmimage_core/'s root holds only what every stage shares; each stage's modules live in its room."""
    root = sorted(path.name for path in (REPO / "glmimage_core").glob("*.py"))
    assert root == ["__init__.py", "__main__.py", "cli.py", "dtypes.py", "errors.py", "images.py", "payloads.py",
                    "shapes.py"], root
    rooms = sorted(path.name for path in (REPO / "glmimage_core").iterdir()
                   if path.is_dir() and (path / "__init__.py").is_file())
    assert rooms == ["ar", "demo", "dit", "memory", "tokens", "weights"], rooms


#: A marker of each GLM-Image DiT sampling step, and the one module allowed to write it (issue 17, section 3):
#: the engine's loop and ComfyUI's path call these primitives instead of repeating them.
DIT_STEPS = {
    "latent_dist": "glmimage_core/dit/latents.py",  # VAE encode: raw latents are the distribution's mode
    "tiled_decode": "glmimage_core/dit/latents.py",  # VAE decode, tiled when it does not fit
    "np.linspace(": "glmimage_core/dit/schedule.py",  # the timestep grid
    "dit_step_bytes(": "glmimage_core/dit/fit.py",  # the VRAM fit of a DiT step (vram_plan defines it)
    "functional.pad(": "glmimage_core/dit/forward.py",  # glyph rows of different lengths, padded
    "- mean) / std": "glmimage_core/payloads.py",  # latent normalisation (LatentStats)
}


def test_each_dit_sampling_step_is_written_once():
    """The schedule, guidance rows, source latents, VAE decode / tiling, VRAM fit and latent normalisation live in
    one module each (glmimage_core/dit/ or payloads); glmimage_comfy and the engine's loop call them."""
    texts = {str(path.relative_to(REPO)).replace("\\", "/"): path.read_text(encoding="utf-8")
             for folder in ("glmimage_core", "glmimage_comfy", "nodes") for path in (REPO / folder).rglob("*.py")}
    for marker, home in DIT_STEPS.items():
        writers = sorted(name for name, text in texts.items()
                         if marker in text and name != "glmimage_core/memory/vram_plan.py")
        assert writers == [home], f"{marker!r} is written in {writers}; it belongs in {home} only"
    mixes = sorted(name for name, text in texts.items() if re.search(r"\w+ \+ \w+ \* \(\w+ - \w+\)", text))
    assert mixes == ["glmimage_core/dit/guidance.py"], f"the guidance mix is written in {mixes}"
