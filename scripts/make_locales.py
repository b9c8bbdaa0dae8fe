"""Writes locales/en from the nodes' live schema and lists what locales/zh lacks or has too much.

    .venv/bin/python scripts/make_locales.py          # rewrite locales/en, report zh
    .venv/bin/python scripts/make_locales.py --check  # change nothing; exit 1 when en or zh is out of step

ComfyUI serves custom_nodes/<pack>/locales/<lang>/{main,nodeDefs}.json to its editor at /i18n
(app/custom_node_manager.py, `build_translations`): main.json's keys go in as they are (the editor
translates category parts through `nodeCategories.<part>`), nodeDefs.json under `nodeDefs`. The
editor looks strings up as nodeDefs.<node id>.display_name / description /
inputs.<input id>.name / .tooltip / outputs.<index>.name / .tooltip (ids with '.' -> '_'), falling
back to the schema's own English. So English is generated here (it must equal the schema, or the
editor would show stale text), and Chinese is written by hand; tests/test_locales.py checks both
against the schema, so a renamed input cannot leave a stale translation behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCALES = REPO / "locales"
LANGUAGES = ("en", "zh")


def i18n_key(name: str) -> str:
    """The editor's normalizeI18nKey: dots would split the lookup path."""
    return name.replace(".", "_")


def node_strings(node_cls) -> dict:
    """One node's English strings, as the editor reads them (outputs by index, named as /object_info's
    output_name: the display name, else the type)."""
    schema = node_cls.define_schema()
    entry = {"display_name": schema.display_name or schema.node_id}
    if schema.description:
        entry["description"] = schema.description
    inputs = {}
    for item in schema.inputs or []:
        strings = {"name": item.display_name or item.id}
        if item.tooltip:
            strings["tooltip"] = item.tooltip
        inputs[i18n_key(item.id)] = strings
    if inputs:
        entry["inputs"] = inputs
    outputs = {}
    for index, item in enumerate(schema.outputs or []):
        strings = {"name": item.display_name or item.io_type}
        if item.tooltip:
            strings["tooltip"] = item.tooltip
        outputs[str(index)] = strings
    if outputs:
        entry["outputs"] = outputs
    return entry


def node_defs(nodes) -> dict:
    return {i18n_key(node.define_schema().node_id): node_strings(node) for node in nodes}


def categories(nodes) -> dict:
    parts = sorted({part for node in nodes for part in node.define_schema().category.split("/")})
    return {"nodeCategories": {part: part for part in parts}}


def english(nodes) -> dict[str, dict]:
    """File name -> content of locales/en."""
    return {"main.json": categories(nodes), "nodeDefs.json": node_defs(nodes)}


def key_paths(tree, prefix=()) -> set[tuple]:
    """Every leaf of a nested dict as a path of keys."""
    if not isinstance(tree, dict):
        return {prefix}
    return set().union(*(key_paths(v, prefix + (k,)) for k, v in tree.items())) if tree else set()


def compare(expected: dict, translated: dict) -> tuple[list[str], list[str]]:
    """(missing, stale): strings the schema has that the translation lacks, and translated strings
    the schema no longer has (a renamed or removed node, input or output)."""
    want, have = key_paths(expected), key_paths(translated)
    return (sorted(".".join(p) for p in want - have), sorted(".".join(p) for p in have - want))


def read_locale(lang: str) -> dict[str, dict]:
    folder = LOCALES / lang
    return {name: json.loads((folder / name).read_text(encoding="utf-8")) if (folder / name).is_file() else {}
            for name in ("main.json", "nodeDefs.json")}


def dump(data: dict) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def load_nodes():
    """The pack's node classes, imported as ComfyUI imports the pack (a package, with ComfyUI's
    comfy_api importable from .cache/comfyui or $GLMIMAGE_COMFYUI_DIR)."""
    comfy = Path(os.environ.get("GLMIMAGE_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
    sys.path.insert(0, str(comfy))
    from comfy.cli_args import args

    args.cpu = True
    name = "comfyui_glm_image_pack"
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{name}.glmimage_comfy.comfy_host").install()  # the entry point's first step
    return importlib.import_module(f"{name}.nodes").NODES


def main(argv: list[str]) -> int:
    check = "--check" in argv
    en = english(load_nodes())
    problems = 0
    for name, content in en.items():
        path = LOCALES / "en" / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != dump(content):
                print(f"locales/en/{name} is out of step with the schema: run scripts/make_locales.py")
                problems += 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dump(content), encoding="utf-8")
            print(f"wrote locales/en/{name}")
    for lang in LANGUAGES[1:]:
        have = read_locale(lang)
        for name, content in en.items():
            missing, stale = compare(content, have[name])
            for key in missing:
                print(f"locales/{lang}/{name}: missing {key}  (en: {_lookup(content, key)!r})")
            for key in stale:
                print(f"locales/{lang}/{name}: stale {key}")
            problems += len(missing) + len(stale)
    return 1 if problems and check else 0


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
