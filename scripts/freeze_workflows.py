"""Freeze a release's example workflows as test fixtures, in the editor's format and in API format.

    apt-get install -y chromium                               # the browser (Debian package)
    python3 -m venv /tmp/pwenv && /tmp/pwenv/bin/pip install playwright   # scratch venv; no `playwright install`
    PYTHONPATH=/tmp/pwenv/lib/python3.11/site-packages .venv/bin/python scripts/freeze_workflows.py 0.1.0 --commit 2b338d0
    PYTHONPATH=... .venv/bin/python scripts/freeze_workflows.py 0.2.0      # the working tree: the release being made
    PYTHONPATH=... .venv/bin/python scripts/freeze_workflows.py --check    # the current editor reads them as the tests do

Writes tests/fixtures/workflows/<version>/:

- editor/<name>.json: example_workflows/<name>.json of that commit (or of the working tree), byte for byte:
  what a user saved with that release;
- api/<name>.json: what the editor's "Export (API)" writes for it with THAT release of the pack installed:
  a real ComfyUI 0.3.75 (tests/comfy_harness.py, .cache/comfyui) with the release's pack tree (git archive
  of the commit) as custom_nodes/ComfyUI-GLM-Image and the tiny random GLM-Image the tests use, its editor
  in headless Chromium, each workflow loaded with app.loadGraphData and `(await app.graphToPrompt()).output`
  written as Export (API) does (JSON.stringify(output, null, 2));
- SOURCE.json: the version, the commit, the ComfyUI and frontend versions and how api/ was made.

tests/integration/test_saved_workflows.py runs every version folder found there on the current pack, so
freezing a release is all it takes to keep its workflows working. Nothing is run here (graphToPrompt does
not queue); a workflow with a node type the editor does not know, or whose API prompt leaves out one of
its nodes, stops the script.

--check freezes nothing: it opens every frozen editor workflow in the CURRENT pack's editor and checks that
what the editor sends is what the server test's converter (workflow_to_api_prompt, old widgets_values read
by position) reads, apart from the widgets added since, which the editor fills in at their defaults. (That
old values land on the inputs they were saved for is the server test's own check, against api/.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIXTURES = REPO / "tests" / "fixtures" / "workflows"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETTINGS = {"Comfy.TutorialCompleted": True}  # no first-run template browser over the canvas


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout


def pack_tree(commit: str | None, scratch: Path) -> Path:
    """The pack as released: `git archive` of the commit (tracked files only), or the working tree."""
    if commit is None:
        return REPO
    tree = scratch / "pack"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start_server(base: Path, pack: Path):
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout
    from PIL import Image
    from tests.comfy_harness import PACK_NAME, ComfyServer

    server = ComfyServer(base, link_pack=False)
    (server.base / "custom_nodes" / PACK_NAME).symlink_to(pack, target_is_directory=True)
    server.add_model("GLM-Image", build_tiny_full_hub_layout)  # the folder the example workflows name
    Image.new("RGB", (256, 192), (90, 140, 200)).save(server.input_dir / "example.png")
    (server.base / "user" / "default").mkdir(parents=True, exist_ok=True)
    (server.base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
    server.start()
    return server


def export_api(page, workflow: dict, name: str) -> dict:
    """The editor's Export (API) of `workflow`: loaded as a user opens a file, then graphToPrompt."""
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    page.wait_for_timeout(800)
    unknown = page.evaluate("() => window.app.graph._nodes.map(n => n.type)"
                            ".filter(t => !window.LiteGraph.registered_node_types[t])")
    if unknown:
        raise SystemExit(f"{name}: node types the editor does not know: {unknown}")
    output = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    expected = {str(n["id"]) for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote", "Reroute",
                                                                            "PrimitiveNode")}
    if set(output) != expected:
        raise SystemExit(f"{name}: the editor's prompt has nodes {sorted(output)}, the workflow {sorted(expected)}")
    return output


def in_editor(pack: Path, scratch: Path, work) -> tuple[dict, str | None]:
    """Starts ComfyUI with `pack`, opens its editor and returns (work(page, server), frontend version)."""
    from playwright.sync_api import sync_playwright

    server = start_server(scratch / "comfy", pack)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url, wait_until="networkidle")
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180_000)
            page.wait_for_timeout(1500)
            frontend = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || null")
            result = work(page, server)
            browser.close()
    finally:
        server.stop()
    return result, frontend


def freeze(version: str, commit: str | None) -> int:
    from tests.comfy_harness import COMFYUI_DIR, comfyui_version

    out = FIXTURES / version
    with tempfile.TemporaryDirectory(prefix="glmimage-freeze-") as tmp:
        scratch = Path(tmp)
        pack = pack_tree(commit, scratch)
        sources = sorted((pack / "example_workflows").glob("*.json"))
        if not sources:
            raise SystemExit(f"no example_workflows/*.json in {commit or 'the working tree'}")
        exported, frontend = in_editor(pack, scratch, lambda page, server: {
            path.name: export_api(page, json.loads(path.read_text()), path.name) for path in sources})
        if out.exists():
            shutil.rmtree(out)
        (out / "editor").mkdir(parents=True)
        (out / "api").mkdir()
        for path in sources:
            shutil.copyfile(path, out / "editor" / path.name)
            # Export (API): JSON.stringify(output, null, 2), which json.dumps(indent=2) writes the same way
            (out / "api" / path.name).write_text(json.dumps(exported[path.name], indent=2, ensure_ascii=False))
            print(f"{version}/{path.name}: {len(exported[path.name])} nodes")
    source = {"version": version, "commit": commit or git("rev-parse", "HEAD").strip() + " (working tree)",
              "editor": "example_workflows/*.json of that commit, as they are",
              "api": "the editor's Export (API): (await app.graphToPrompt()).output with that commit's pack "
                     "installed, in headless Chromium (scripts/freeze_workflows.py)",
              "comfyui": comfyui_version(COMFYUI_DIR), "frontend": frontend}
    (out / "SOURCE.json").write_text(json.dumps(source, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)} ({len(sources)} workflows; ComfyUI {source['comfyui']}, "
          f"frontend {frontend})")
    return 0


def check_current() -> int:
    """Opens every frozen editor workflow in the CURRENT pack's real editor: every value it sends must be the
    one workflow_to_api_prompt (the tests' converter) reads by position, and the only inputs it adds are the
    widgets new since that release, at their defaults. Confirms that the server test's reading of old
    widgets_values is the editor's."""
    from tests.comfy_harness import input_specs, workflow_to_api_prompt

    files = sorted(FIXTURES.glob("*/editor/*.json"))

    def compare(page, server):
        info, problems = server.object_info(), []
        for path in files:
            label = f"{path.parents[1].name}/{path.name}"
            workflow = json.loads(path.read_text())
            real, converted = export_api(page, workflow, label), workflow_to_api_prompt(workflow, info)
            added = []
            for nid, node in real.items():
                ours = converted[nid]["inputs"]
                problems += [f"{label} node {nid} {node['class_type']}.{k}: editor {v!r}, converter {ours[k]!r}"
                             for k, v in node["inputs"].items() if k in ours and ours[k] != v]
                problems += [f"{label} node {nid} {node['class_type']}.{k}: the editor does not send it"
                             for k in ours if k not in node["inputs"]]
                defaults = {name: options.get("default") for name, _, options in
                            input_specs(info.get(node["class_type"], {}))}
                for k, v in node["inputs"].items():
                    if k in ours:
                        continue
                    added.append(f"{node['class_type']}.{k}={v!r}")
                    if node["class_type"].startswith("GLMImage") and v != defaults.get(k):
                        problems.append(f"{label} node {nid} {node['class_type']}.{k}: the editor adds {v!r}, "
                                        f"not the default {defaults.get(k)!r}")
            print(f"{label}: same values; the editor adds {', '.join(added) or 'nothing'}")
        return problems

    with tempfile.TemporaryDirectory(prefix="glmimage-check-") as tmp:
        problems, frontend = in_editor(REPO, Path(tmp), compare)
    print(f"(ComfyUI editor frontend {frontend})")
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="the release, e.g. 0.1.0: the folder under tests/fixtures/workflows")
    parser.add_argument("--commit", help="the release's git commit; default: the working tree")
    parser.add_argument("--check", action="store_true",
                        help="freeze nothing: open every frozen editor workflow in the current pack's editor and "
                             "compare what it sends with what the tests' converter reads")
    args = parser.parse_args()
    if args.check:
        return check_current()
    if not args.version:
        parser.error("give the version to freeze (or --check)")
    return freeze(args.version, git("rev-parse", args.commit).strip() if args.commit else None)


if __name__ == "__main__":
    sys.exit(main())
