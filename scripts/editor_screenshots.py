"""Screenshots of the example workflows in ComfyUI's real editor, for the README and the template thumbnails.

    apt-get install -y chromium                               # the browser (Debian package)
    python3 -m venv /tmp/pwenv && /tmp/pwenv/bin/pip install playwright   # scratch venv; no `playwright install`
    PYTHONPATH=/tmp/pwenv/lib/python3.11/site-packages .venv/bin/python scripts/editor_screenshots.py

Starts a real ComfyUI (tests/comfy_harness.py, from .cache/comfyui or $GLMIMAGE_COMFYUI_DIR) with the
tiny random GLM-Image the tests use and `--preview-method latent2rgb`, opens its editor in headless
Chromium and, for every workflow in example_workflows/:

- loads it as a user would, then checks what the editor made of it: every node type known (no red
  "missing" node), every widget value as saved (the editor re-serialises the graph; the values must
  come back unchanged), no two nodes overlapping at the sizes the editor draws them; a problem is
  printed and the script exits 1;
- writes example_workflows/<stem>.jpg, the thumbnail ComfyUI's template browser shows for it
  (/api/workflow_templates/<pack>/<stem>.jpg), a square picture of the graph, small; then opens the
  template browser on the pack and checks that it shows every thumbnail.

Then it queues the text-to-image workflow in the editor and writes docs/editor_tokens_preview.jpg while
'generate tokens' shows its live token grid and docs/editor_decode_preview.jpg while 'decode' shows the
picture forming (each taken half way through the node's progress, once its preview frames arrive over
the editor's websocket; the frame rates are printed), and docs/editor_after_run.jpg after the run. The
model is random, so the pictures are noise: the screenshots show where the previews appear, not what
GLM-Image draws.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
THUMB_PX = 512          # the template browser's cards are square; ComfyUI's own thumbnails are 350-400 px
THUMB_MAX_BYTES = 100_000
SCREEN_MAX_BYTES = 250_000
EXAMPLES = REPO / "example_workflows"
DOCS = REPO / "docs"
# A user who has used ComfyUI once: no first-run template browser. Node text drawn at every zoom (the
# editor drops it below a font size, which a whole-graph picture is), no minimap or canvas statistics.
SETTINGS = {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 0,
            "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False}
# ComfyUI's binary websocket events for a preview image (protocol.BinaryEventTypes): plain, and with a
# JSON header naming the node (sent to editors that announce supports_preview_metadata).
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA = 1, 4


def example_picture(path: Path) -> None:
    """A small drawn seascape for the image-to-image workflow's LoadImage (its prompt adds a red boat)."""
    from PIL import Image, ImageDraw

    w, h = 256, 192
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / h
        colour = (int(120 + 100 * t), int(170 + 60 * t), 235) if y < h * 0.55 else (30, int(90 + 60 * t), 140)
        draw.line([(0, y), (w, y)], fill=colour)
    draw.ellipse([180, 20, 220, 60], fill=(255, 220, 120))
    draw.polygon([(0, 110), (70, 70), (140, 106)], fill=(70, 110, 90))
    img.save(path)


def start_server(base: Path):
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout
    from tests.comfy_harness import ComfyServer

    server = ComfyServer(base)
    server.add_model("GLM-Image", build_tiny_full_hub_layout)  # the folder the example workflows name
    example_picture(server.input_dir / "example.png")
    (server.base / "user" / "default").mkdir(parents=True, exist_ok=True)
    (server.base / "user" / "default" / "comfy.settings.json").write_text(json.dumps(SETTINGS))
    server.start(extra_args=["--preview-method", "latent2rgb"])
    return server


def open_editor(browser, url: str, width: int, height: int, scale: float = 1, focus: bool = False, frames=None):
    """A fresh editor tab; focus = ComfyUI's focus mode (menus and side bars hidden: the graph alone)."""
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
    if frames is not None:
        page.on("websocket", lambda ws: ws.on("framereceived", frames.on_frame))
    page.goto(url, wait_until="networkidle")
    page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180_000)
    page.wait_for_timeout(1500)
    close_banners(page)
    if focus:
        page.evaluate("() => window.app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        page.wait_for_timeout(500)
    return page


def close_banners(page) -> None:
    """The 'Nodes 2.0' announcement across the top: closed with its own button, as a user would."""
    banner = page.get_by_text("Introducing Nodes 2.0")
    if banner.count():
        buttons = banner.locator("xpath=ancestor::div[1]/..//button")
        if buttons.count():
            buttons.last.click()
            page.wait_for_timeout(300)


def load(page, workflow: dict) -> None:
    page.evaluate("wf => window.app.loadGraphData(wf)", workflow)
    page.wait_for_timeout(800)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    page.wait_for_timeout(500)


def check_loaded(page, workflow: dict, name: str) -> list[str]:
    """What the editor did not take as saved: unknown node types (drawn red as missing), widget values
    that changed, nodes that overlap at the sizes the editor gives them, its missing-node/model warnings."""
    problems = []
    graph = page.evaluate("""() => ({
        unknown: window.app.graph._nodes.filter(n => !window.LiteGraph.registered_node_types[n.type])
                                         .map(n => n.type),
        nodes: window.app.graph.serialize().nodes})""")
    problems += [f"{name}: node type {t} is missing in the editor" for t in graph["unknown"]]
    seen = {node["id"]: node for node in graph["nodes"]}
    for node in workflow["nodes"]:
        got = seen.get(node["id"])
        if got is None:
            problems.append(f"{name}: node {node['id']} ({node['type']}) was dropped")
        elif (got.get("widgets_values") or []) != (node.get("widgets_values") or []):
            problems.append(f"{name}: {node['type']} widgets {got.get('widgets_values')} != saved "
                            f"{node.get('widgets_values')}")
    problems += overlaps(page, name)
    for warning in ("This workflow has missing nodes", "the following models were not found"):
        if page.get_by_text(warning).count():
            problems.append(f"{name}: the editor says {warning!r}")
    return problems


def overlaps(page, name: str) -> list[str]:
    """Nodes that overlap at the sizes the editor gives them now (after a run, with the texts and
    previews the nodes show)."""
    problems = []
    boxes = page.evaluate("""() => window.app.graph._nodes.map(n => {
        const min = n.computeSize();
        return {id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - window.LiteGraph.NODE_TITLE_HEIGHT,
                w: Math.max(n.size[0], min[0]), h: Math.max(n.size[1], min[1]) + window.LiteGraph.NODE_TITLE_HEIGHT,
                saved_size: [n.size[0], n.size[1]], min_size: min};
    })""")
    for i, one in enumerate(boxes):
        for other in boxes[i + 1:]:
            if (one["x"] < other["x"] + other["w"] and other["x"] < one["x"] + one["w"]
                    and one["y"] < other["y"] + other["h"] and other["y"] < one["y"] + one["h"]):
                problems.append(f"{name}: {one['type']} (node {one['id']}, {one['min_size']}) overlaps "
                                f"{other['type']} (node {other['id']}, {other['min_size']})")
    return problems


def save_jpeg(png: bytes, path: Path, size: tuple[int, int] | None, max_bytes: int) -> int:
    """PNG screenshot -> JPEG of at most max_bytes (quality stepped down until it fits)."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    if size:
        img = img.resize(size, Image.LANCZOS)
    for quality in (88, 82, 76, 70, 62, 55, 48, 40):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
        if buf.tell() <= max_bytes:
            break
    path.write_bytes(buf.getvalue())
    return buf.tell()


def graph_square(page, margin: int = 24) -> bytes:
    """The graph alone (its nodes' bounds on screen, not the editor's buttons), centred on a square of
    the canvas colour: the template browser shows thumbnails as square cards."""
    from PIL import Image

    box = page.evaluate("""() => {
        const c = window.app.canvas, ds = c.ds, title = window.LiteGraph.NODE_TITLE_HEIGHT;
        let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
        for (const n of window.app.graph._nodes) {
            const min = n.computeSize();
            x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
            x1 = Math.max(x1, n.pos[0] + Math.max(n.size[0], min[0]));
            y1 = Math.max(y1, n.pos[1] + Math.max(n.size[1], min[1]));
        }
        const r = c.canvas.getBoundingClientRect();
        const a = ds.convertOffsetToCanvas([x0, y0]), b = ds.convertOffsetToCanvas([x1, y1]);
        return {x: r.left + a[0], y: r.top + a[1], w: b[0] - a[0], h: b[1] - a[1]};
    }""")
    clip = {"x": max(0, box["x"] - margin), "y": max(0, box["y"] - margin), "width": box["w"] + 2 * margin,
            "height": box["h"] + 2 * margin}
    graph = Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB")
    background = graph.getpixel((2, 2))
    side = max(graph.size)
    square = Image.new("RGB", (side, side), background)
    square.paste(graph, ((side - graph.width) // 2, (side - graph.height) // 2))
    buf = io.BytesIO()
    square.save(buf, "PNG")
    return buf.getvalue()


def thumbnails(browser, url: str) -> list[str]:
    problems = []
    page = open_editor(browser, url, 1000, 1000, scale=1.5, focus=True)
    for path in sorted(EXAMPLES.glob("*.json")):
        workflow = json.loads(path.read_text())
        load(page, workflow)
        problems += check_loaded(page, workflow, path.name)
        size = save_jpeg(graph_square(page), path.with_suffix(".jpg"), (THUMB_PX, THUMB_PX), THUMB_MAX_BYTES)
        print(f"{path.name}: {len(workflow['nodes'])} nodes loaded; thumbnail {size // 1024} KiB")
    page.close()
    return problems


def check_template_browser(browser, url: str) -> list[str]:
    """Opens the editor's template browser on the pack's category, as a user would, and checks that it
    fetched every example workflow's thumbnail (HTTP 200)."""
    from tests.comfy_harness import PACK_NAME

    fetched: dict[str, int] = {}
    page = open_editor(browser, url, 1400, 900)
    page.on("response", lambda r: fetched.__setitem__(r.url.rsplit("/", 1)[-1], r.status)
            if f"/workflow_templates/{PACK_NAME}/" in r.url else None)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(PACK_NAME).first.click()
    page.wait_for_timeout(3000)
    problems = [f"template browser: {path.stem}.jpg not shown (fetched: {fetched})"
                for path in sorted(EXAMPLES.glob("*.json")) if fetched.get(f"{path.stem}.jpg") != 200]
    if not problems:
        print(f"template browser: {PACK_NAME} lists {len(fetched)} thumbnails, all fetched")
    page.close()
    return problems


class Frames:
    """What the editor's websocket brings: which node runs, and the preview frames per node."""

    def __init__(self) -> None:
        self.running: str | None = None
        self.previews: dict[str, list[float]] = {}  # node id -> arrival times of its preview frames
        self.progress: dict[str, float] = {}  # node id -> value / max of its last progress message
        self.done = False

    def on_frame(self, payload) -> None:
        if isinstance(payload, (bytes, bytearray)):
            kind = struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else None
            node = self.running
            if kind == PREVIEW_IMAGE_WITH_METADATA:
                size = struct.unpack(">I", payload[4:8])[0]
                node = json.loads(payload[8:8 + size]).get("node_id", node)
            if kind in (PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA) and node is not None:
                self.previews.setdefault(node, []).append(time.monotonic())
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        data = message.get("data") or {}
        if message.get("type") == "progress" and data.get("node") is not None and data.get("max"):
            self.progress[str(data["node"])] = data["value"] / data["max"]
        if message.get("type") == "executing":
            node = (message.get("data") or {}).get("node")
            self.running = node
            if node is None:
                self.done = True
        elif message.get("type") in ("execution_success", "execution_error", "execution_interrupted"):
            self.done = True


def live_run(browser, url: str, workflow: dict, targets: dict[str, str]) -> dict:
    """Queues the workflow in the editor; a screenshot while each node of `targets` (shot name -> node
    id) shows its preview, half way through its work (the grid visibly filling in, the picture forming),
    and one after the run."""
    frames = Frames()
    page = open_editor(browser, url, 1600, 900, frames=frames)
    load(page, workflow)
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    shots, deadline = {}, time.monotonic() + 600
    while time.monotonic() < deadline and not frames.done:
        for shot, node in targets.items():
            if (shot not in shots and frames.running == node and frames.previews.get(node)
                    and frames.progress.get(node, 0) >= 0.5):
                shots[shot] = page.screenshot()
                shots[f"{shot}_at"] = frames.progress[node]
        page.wait_for_timeout(40)
    if not frames.done:
        raise RuntimeError("the run did not finish within 10 minutes")
    page.wait_for_timeout(1500)
    shots["after"] = page.screenshot()
    shots["previews"] = dict(frames.previews)
    shots["problems"] = overlaps(page, "after the run")
    page.close()
    return shots


def main() -> int:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="glmimage-editor-") as tmp:
        server = start_server(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                problems = thumbnails(browser, server.url)
                problems += check_template_browser(browser, server.url)
                t2i = json.loads((EXAMPLES / "glm_image_text_to_image.json").read_text())
                ids = {n["type"]: str(n["id"]) for n in t2i["nodes"]}
                targets = {"tokens": ids["GLMImageGenerateTokens"], "decode": ids["GLMImageDecode"]}
                shots = live_run(browser, server.url, t2i, targets)
                browser.close()
        finally:
            server.stop()
    problems += shots["problems"]
    for problem in problems:
        print("PROBLEM:", problem)
    missing = [shot for shot in targets if shot not in shots]
    if missing:
        print(f"PROBLEM: no previews seen half way through {missing} (frames per node: "
              f"{ {k: len(v) for k, v in shots['previews'].items()} })")
        return 1
    DOCS.mkdir(exist_ok=True)
    for key in (*targets, "after"):
        name = f"editor_{key}_preview.jpg" if key != "after" else "editor_after_run.jpg"
        size = save_jpeg(shots[key], DOCS / name, None, SCREEN_MAX_BYTES)
        print(f"docs/{name}: {size // 1024} KiB" + (f" (at {shots[key + '_at']:.0%})" if key != "after" else ""))
    for node, times in shots["previews"].items():
        span = times[-1] - times[0]
        rate = (len(times) - 1) / span if span > 0 else float("nan")
        print(f"node {node}: {len(times)} preview frames in {span:.1f} s ({rate:.1f} per second)")

    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
