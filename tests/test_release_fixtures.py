"""The frozen workflows of each release (tests/fixtures/workflows/<version>/, scripts/freeze_workflows.py)
are well-formed, and CHANGELOG.md has an entry for the version pyproject.toml gives.

tests/integration/test_saved_workflows.py runs those workflows in a real ComfyUI; this checks, without a
server, that a folder holds what that test and the next release's freeze expect: editor/ and api/ with
the same workflows, each API prompt the editor's export of its editor workflow (same nodes, same types,
links to nodes that exist), and a SOURCE.json naming the version and the commit it came from."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "workflows"
VERSION = re.compile(r"\d+\.\d+\.\d+")
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
RELEASES = sorted((p for p in FIXTURES.iterdir() if p.is_dir()), key=lambda p: p.name)


def version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def pyproject_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_released_versions_are_frozen():
    names = [p.name for p in RELEASES]
    assert "0.1.0" in names and all(VERSION.fullmatch(n) for n in names), names
    # no fixtures of a release after the one being made
    assert version_key(max(names, key=version_key)) <= version_key(pyproject_version()), names


@pytest.mark.parametrize("release", RELEASES, ids=[p.name for p in RELEASES])
def test_a_frozen_release_is_well_formed(release):
    source = json.loads((release / "SOURCE.json").read_text())
    assert source["version"] == release.name
    assert re.fullmatch(r"[0-9a-f]{40}( \(working tree\))?", source["commit"]), source["commit"]
    editor = {p.name: json.loads(p.read_text()) for p in sorted((release / "editor").glob("*.json"))}
    api = {p.name: json.loads(p.read_text()) for p in sorted((release / "api").glob("*.json"))}
    assert editor and set(editor) == set(api), (sorted(editor), sorted(api))
    for name, workflow in editor.items():
        nodes = {node["id"]: node for node in workflow["nodes"]}
        assert len(nodes) == len(workflow["nodes"]), f"{name}: duplicate node ids"
        for link in workflow["links"]:
            link_id, src, src_slot, dst, dst_slot, _ = link
            assert src in nodes and dst in nodes, (name, link)
            assert nodes[dst]["inputs"][dst_slot]["link"] == link_id, (name, link)
            assert link_id in (nodes[src]["outputs"][src_slot]["links"] or []), (name, link)
        prompt = api[name]
        assert set(prompt) == {str(i) for i, n in nodes.items() if n["type"] not in UI_ONLY_TYPES}, name
        for nid, node in prompt.items():
            assert node["class_type"] == nodes[int(nid)]["type"], (name, nid)
            for key, value in node["inputs"].items():
                if isinstance(value, list):  # a link: [source node id, output slot]
                    assert value[0] in prompt and isinstance(value[1], int), (name, nid, key, value)
        # the editor's export carries every typed-in value of the saved workflow (the converse of a link)
        linked = {(str(n["id"]), s["name"]) for n in workflow["nodes"] for s in n.get("inputs") or []
                  if s.get("link") is not None}
        for nid, node in prompt.items():
            for key, value in node["inputs"].items():
                if isinstance(value, list):
                    assert (nid, key) in linked, (name, nid, key)


def test_the_changelog_has_an_entry_for_this_version_newest_first():
    text = (REPO / "CHANGELOG.md").read_text()
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\](?: - (\d{4}-\d{2}-\d{2}))?", text, flags=re.M)
    versions = [v for v, _ in released]
    assert pyproject_version() in versions, (pyproject_version(), versions)
    assert versions == sorted(versions, key=version_key, reverse=True), versions
    assert all(date for _, date in released), released
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        headings = re.findall(r"^### (.+)$", section, flags=re.M)
        assert headings and set(headings) <= {"Compatibility", "Added", "Changed", "Deprecated", "Removed",
                                              "Fixed", "Security"}, headings
