"""The editor's strings: output display names, advanced inputs, and locales/ checked against the live schema.

ComfyUI's editor translates a custom node pack through custom_nodes/<pack>/locales/<lang>/*.json
(served at /i18n, see tests/integration/test_locales_templates_server.py); a key the schema no
longer has is never shown and a missing one falls back to English, silently. So both locales are
compared here with what the nodes define right now: renaming an input without updating the
translations fails this test instead of leaving stale text behind.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u4e00-\u9fff]")
NUMBER = re.compile(r"\d+(?:\.\d+)?")

# Inputs that most users never touch: folded away where the running ComfyUI knows 'advanced'.
ADVANCED_INPUTS = {
    "GLMImageARLoader": {"dtype", "device", "attention", "quantization"},
    "GLMImageGenerateTokens": {"do_sample", "top_p", "top_k", "speed", "allow_streaming"},
    "GLMImageGenerateTokensServer": {"do_sample", "top_p", "top_k"},
    "GLMImageDecoderLoader": {"dtype", "device", "vram_limit_gb"},
    "GLMImageDiTLoader": {"dtype", "device", "vram_limit_gb"},
    "GLMImageVAELoader": {"dtype", "device"},
    "GLMImageGlyphEncoderLoader": {"dtype", "device"},
}


@pytest.fixture(scope="module")
def nodes(comfy_pack):
    return sys.modules[f"{comfy_pack.__name__}.nodes"].NODES


@pytest.fixture(scope="module")
def api(comfy_pack):
    return sys.modules[f"{comfy_pack.__name__}.nodes.api"]


@pytest.fixture(scope="module")
def make_locales():
    spec = importlib.util.spec_from_file_location("make_locales", REPO / "scripts" / "make_locales.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_output_has_a_display_name_and_ids_stay(nodes):
    """The editor shows output_name (display name, else the bare type: 'GLMIMAGE_SHAPE, INT, INT...')."""
    for node in nodes:
        schema = node.define_schema()
        for output in schema.outputs:
            assert output.display_name, f"{schema.node_id}.{output.id} has no display name"
        ids = [o.id for o in schema.outputs]
        assert len(set(ids)) == len(ids) and all(ids), (schema.node_id, ids)
    shape = next(n for n in nodes if n.define_schema().node_id == "GLMImageShape").define_schema()
    # saved workflows and tests refer to these ids; only the names shown change
    assert [o.id for o in shape.outputs] == ["shape", "width_px", "height_px", "grid_h", "grid_w", "preview_h",
                                            "preview_w", "tokens_t2i", "tokens_i2i"]
    assert shape.get_v1_info(None).output_name[:3] == ["shape", "width (px)", "height (px)"]


def test_rarely_touched_inputs_are_advanced_where_comfyui_supports_it(nodes, api):
    supported = "advanced" in api.io.Int.Input.__init__.__code__.co_varnames
    assert bool(api.ADVANCED) == supported
    for node in nodes:
        schema = node.define_schema()
        marked = {i.id for i in schema.inputs if getattr(i, "advanced", None)}
        info = schema.get_v1_info(node)
        in_info = {name for group in info.input.values() if isinstance(group, dict)
                   for name, spec in group.items() if isinstance(spec, tuple) and len(spec) > 1
                   and isinstance(spec[1], dict) and spec[1].get("advanced")}
        expected = ADVANCED_INPUTS.get(schema.node_id, set()) if supported else set()
        assert marked == expected and in_info == expected, (schema.node_id, marked, in_info)
        assert expected <= {i.id for i in schema.inputs}, schema.node_id


def test_english_locale_is_the_live_schema(nodes, make_locales):
    expected = make_locales.english(nodes)
    have = make_locales.read_locale("en")
    for name, content in expected.items():
        missing, stale = make_locales.compare(content, have[name])
        assert not missing and not stale, (f"locales/en/{name} out of step: run scripts/make_locales.py",
                                           missing, stale)
        assert have[name] == content, f"locales/en/{name}: strings differ from the schema; run scripts/make_locales.py"
    assert have["main.json"] == {"nodeCategories": {"GLM-Image": "GLM-Image"}}


def test_chinese_locale_covers_the_schema_exactly_and_is_translated(nodes, make_locales):
    en = make_locales.english(nodes)
    zh = make_locales.read_locale("zh")
    for name, content in en.items():
        missing, stale = make_locales.compare(content, zh[name])
        assert not missing, f"locales/zh/{name} lacks {missing} (scripts/make_locales.py lists them)"
        assert not stale, f"locales/zh/{name} has strings for what the nodes no longer have: {stale}"
    assert zh["main.json"]["nodeCategories"]["GLM-Image"]
    for node_id, entry in en["nodeDefs.json"].items():
        ours = zh["nodeDefs.json"][node_id]
        pairs = [(f"{node_id}.display_name", entry["display_name"], ours["display_name"]),
                 (f"{node_id}.description", entry["description"], ours["description"])]
        for group in ("inputs", "outputs"):
            for key, strings in entry.get(group, {}).items():
                pairs.append((f"{node_id}.{group}.{key}.tooltip", strings["tooltip"], ours[group][key]["tooltip"]))
                assert ours[group][key]["name"].strip(), (node_id, group, key)
        for where, english_text, chinese in pairs:
            assert CJK.search(chinese), f"{where}: not translated: {chinese!r}"
            # numbers (sizes, defaults, GB) and GLM-Image's size tag must survive the translation
            for number in NUMBER.findall(english_text):
                assert number in chinese, f"{where}: {number} of {english_text!r} is missing in {chinese!r}"
            assert ("<sop>H W<eop>" in english_text) == ("<sop>H W<eop>" in chinese), where
    # one word for 'token' throughout: ciyuan (\u8bcd\u5143), not its alternative lingpai (\u4ee4\u724c)
    text = json.dumps(zh, ensure_ascii=False)
    assert "\u8bcd\u5143" in text and "\u4ee4\u724c" not in text


def test_locale_files_are_what_the_script_writes(make_locales):
    """UTF-8 JSON with the characters as they are (not \\u escapes), so the files can be reviewed."""
    for lang in make_locales.LANGUAGES:
        for name in ("main.json", "nodeDefs.json"):
            path = REPO / "locales" / lang / name
            raw = path.read_text(encoding="utf-8")
            assert raw == make_locales.dump(json.loads(raw)), path
