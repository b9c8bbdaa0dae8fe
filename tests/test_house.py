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
    """The loaders turn `weight_dtype` into a storage dtype (with its checks) through cast_layers.weight_dtype_in
    only: no module parses or checks it on its own."""
    users = [str(path.relative_to(REPO)) for folder in ("glmimage_core", "glmimage_comfy", "nodes")
             for path in (REPO / folder).rglob("*.py")
             if "resolve_weight_dtype(" in path.read_text(encoding="utf-8") and path.name != "cast_layers.py"]
    assert not users, users
