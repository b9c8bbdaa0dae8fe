"""A real ComfyUI server for the tests, and saved (UI) workflows turned into API prompts.

Plain library, no pytest in here. The server is a ComfyUI tree that the setup scripts unpack,
started from that tree, unchanged, with the Python of the venv made for it, as

    <python> main.py --cpu --listen 127.0.0.1 --port <free port> --base-directory <tmp>
                     --disable-auto-launch --disable-api-nodes --database-url sqlite:///:memory:

so that everything it writes (models, input, output, temp, user, custom_nodes) lives in a fresh
temporary base directory, into which this repo is linked as custom_nodes/ComfyUI-GLM-Image.

    server = ComfyServer(tmp_dir)                    # lays out the base directory
    build_something(server.model_path("tiny"))       # models/glm_image/tiny
    server.start()                                   # waits until /system_stats answers
    prompt = workflow_to_api_prompt(saved_workflow, server.object_info())
    entry = server.run(prompt)                       # queue_prompt + wait_for: the history entry
    server.stop()

The pack is tested against two ComfyUIs (`comfy_targets()`): the primary one, .cache/comfyui
(0.3.75, the oldest the pack supports; or $GLMIMAGE_COMFYUI_DIR) run by this process's own Python,
and ComfyUI 0.33.0 (2026), .cache/comfyui-0.33.0 run by .venv-comfy033's Python (torch 2.11 +
torchaudio, which 0.33 imports). Each server gets its Python explicitly, so a test process on one
venv can drive a server on another.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("GLMIMAGE_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
# ComfyUI 0.33.0 (Aug 2026) and its venv, as scripts/setup_comfy033.sh lays them out.
COMFY033_VERSION = "0.33.0"
COMFY033_DIR = REPO / ".cache" / f"comfyui-{COMFY033_VERSION}"
COMFY033_PYTHON = REPO / ".venv-comfy033" / "bin" / "python"
COMFY033_TARBALL = Path(os.environ.get("GLMIMAGE_COMFY033_TARBALL",
                                       REPO.parent / "shared" / "vendor" / f"comfyui-{COMFY033_VERSION}.tar.gz"))
#: city96/ComfyUI-GGUF (Apache-2.0) at commit 795e451: unpacked into the test server's custom_nodes (and onto
#: sys.path for in-process tests) so GGUF files load through it as users' do; never shipped with the pack.
COMFYUI_GGUF_TARBALL = Path(os.environ.get("GLMIMAGE_COMFYUI_GGUF_TAR",
                                           REPO.parent / "shared" / "vendor" / "comfyui-gguf-795e451.tar.gz"))
PACK_NAME = "ComfyUI-GLM-Image"
MODEL_FOLDER = "glm_image"  # models/glm_image, the folder the pack registers with ComfyUI
SETUP_HINT = "run `bash scripts/setup_env.sh` (or set GLMIMAGE_COMFYUI_DIR to a ComfyUI tree)"
# Node types that only exist in the editor; the converter resolves or drops them.
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODE_MUTED, MODE_BYPASSED = 2, 4


class ComfyError(RuntimeError):
    pass


def comfyui_dir() -> Path:
    return COMFYUI_DIR


def comfyui_missing_reason(comfy_dir: Path = COMFYUI_DIR) -> str | None:
    """Why the ComfyUI tree cannot be used, or None when it is in place."""
    if not (comfy_dir / "main.py").is_file():
        return f"no ComfyUI at {comfy_dir}: {SETUP_HINT}"
    if (comfy_dir / "extra_model_paths.yaml").exists():
        return (f"{comfy_dir}/extra_model_paths.yaml exists (horde's paths; ComfyUI fails to start with it): "
                f"delete it or {SETUP_HINT}")
    return None


def comfyui_version(comfy_dir: Path) -> str | None:
    """The version a ComfyUI tree declares in its comfyui_version.py, or None."""
    try:
        text = (Path(comfy_dir) / "comfyui_version.py").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


@dataclass(frozen=True)
class ComfyTarget:
    """One ComfyUI the pack is tested against: its tree, the Python that runs it, and, when it cannot
    be used, why (the tests skip or fail with exactly that text)."""

    name: str            # the test id, e.g. "comfyui-0.33.0"
    comfy_dir: Path
    python: str
    missing: str | None = None


def comfy033_source_missing_reason(comfy_dir: Path = COMFY033_DIR, tarball: Path = COMFY033_TARBALL) -> str | None:
    """Why ComfyUI 0.33.0 cannot even be set up here (no source snapshot and no tree unpacked earlier),
    or None. scripts/run_tests.sh asks this before it starts the 0.33.0 run."""
    if not Path(tarball).is_file() and not (Path(comfy_dir) / "main.py").is_file():
        return (f"ComfyUI {COMFY033_VERSION} is not set up at {comfy_dir}: its source snapshot {tarball} does not "
                f"exist (put comfyui-{COMFY033_VERSION}.tar.gz there or set GLMIMAGE_COMFY033_TARBALL, then run "
                f"`bash scripts/setup_env.sh`)")
    return None


def comfy033_missing_reason(comfy_dir: Path = COMFY033_DIR, python: Path = COMFY033_PYTHON,
                            tarball: Path = COMFY033_TARBALL) -> str | None:
    """Why ComfyUI 0.33.0 cannot be tested against, or None when its tree and venv are in place."""
    where = f"ComfyUI {COMFY033_VERSION} is not set up at {comfy_dir}"
    source_missing = comfy033_source_missing_reason(comfy_dir, tarball)
    if source_missing:
        return source_missing
    if comfyui_version(comfy_dir) != COMFY033_VERSION:
        return f"{where} (no comfyui_version.py saying {COMFY033_VERSION}): run `bash scripts/setup_env.sh`"
    venv = Path(python).parent.parent
    if not Path(python).is_file() or not (venv / ".glmimage-stamp").is_file():
        return (f"{where}: its venv {venv} is missing or incomplete (no {python} or no .glmimage-stamp): "
                f"run `bash scripts/setup_env.sh`")
    return comfyui_missing_reason(comfy_dir)


def comfy_targets() -> list[ComfyTarget]:
    """The ComfyUIs to run the server tests on: the primary tree with this process's Python (or
    $GLMIMAGE_COMFYUI_PYTHON), then ComfyUI 0.33.0 with .venv-comfy033's Python, unless it is the same
    tree. Targets that are not set up are listed with their reason, so the tests can say it.

    GLMIMAGE_COMFY033_OWN_RUN=1 leaves 0.33.0 out: scripts/run_tests.sh then tests it in a pytest run
    of its own, on its own venv (GLMIMAGE_COMFYUI_DIR = the 0.33.0 tree, so it is the primary there).
    GLMIMAGE_SKIP_COMFY033=1 keeps it listed but not usable, so its tests skip and say so."""
    primary_python = os.environ.get("GLMIMAGE_COMFYUI_PYTHON", sys.executable)
    version = comfyui_version(COMFYUI_DIR)
    targets = [ComfyTarget(f"comfyui-{version}" if version else "comfyui", COMFYUI_DIR, primary_python,
                           comfyui_missing_reason(COMFYUI_DIR))]
    if os.environ.get("GLMIMAGE_COMFY033_OWN_RUN") == "1" or COMFY033_DIR.resolve() == COMFYUI_DIR.resolve():
        return targets
    if os.environ.get("GLMIMAGE_SKIP_COMFY033") == "1":
        missing = f"GLMIMAGE_SKIP_COMFY033=1: ComfyUI {COMFY033_VERSION} left out on request"
    else:
        missing = comfy033_missing_reason()
    targets.append(ComfyTarget(f"comfyui-{COMFY033_VERSION}", COMFY033_DIR, str(COMFY033_PYTHON), missing))
    return targets


def unpack_comfyui_gguf(into: Path) -> Path | None:
    """ComfyUI-GGUF's source unpacked into `into` (as `into`/ComfyUI-GGUF/), or None without its snapshot."""
    import tarfile

    if not COMFYUI_GGUF_TARBALL.is_file():
        return None
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(COMFYUI_GGUF_TARBALL) as tar:
        tar.extractall(into, filter="data")
    return next((p for p in into.iterdir() if (p / "ops.py").is_file() and (p / "loader.py").is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """One ComfyUI server process with its own temporary base directory."""

    def __init__(self, base: Path, comfy_dir: Path = COMFYUI_DIR, link_pack: bool = True,
                 python: str | Path | None = None, device: str = "cpu") -> None:
        """`python` runs main.py: the venv made for that ComfyUI (default: this process's Python).
        `device`: "cpu" (the default: main.py gets --cpu, as every CPU test wants) or "gpu" (no --cpu:
        ComfyUI picks the GPU and its own VRAM mode; the GPU check adds --lowvram or
        --disable-dynamic-vram through start(extra_args=...))."""
        if device not in ("cpu", "gpu"):
            raise ComfyError(f"ComfyServer device must be 'cpu' or 'gpu', not {device!r}")
        self.device = device
        reason = comfyui_missing_reason(comfy_dir)
        if reason:
            raise ComfyError(reason)
        self.comfy_dir, self.base = Path(comfy_dir), Path(base)
        self.python = str(python or sys.executable)
        for sub in ("custom_nodes", f"models/{MODEL_FOLDER}", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        if link_pack:
            link = self.base / "custom_nodes" / PACK_NAME
            if not link.exists():
                link.symlink_to(REPO, target_is_directory=True)
        self.models_dir = self.base / "models" / MODEL_FOLDER
        self.input_dir, self.output_dir = self.base / "input", self.base / "output"
        self.log_path = self.base / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self.url = ""
        self._log = None

    # --- models and inputs ----------------------------------------------
    def model_path(self, name: str) -> Path:
        """models/glm_image/<name> of this server (not created: builders make it)."""
        return self.models_dir / name

    def add_model(self, name: str, source: Path | str | Callable[[Path], object]) -> Path:
        """Places a model folder at models/glm_image/<name>: a callable is called with that path
        (e.g. glmimage_core.demo.models.build_tiny_ar_model); a folder is symlinked there."""
        target = self.model_path(name)
        if callable(source):
            source(target)
        else:
            target.symlink_to(Path(source).resolve(), target_is_directory=True)
        return target

    def add_input(self, path: Path | str, name: str | None = None) -> str:
        """Copies a file into the server's input folder; returns the name a LoadImage widget uses."""
        name = name or Path(path).name
        shutil.copyfile(path, self.input_dir / name)
        return name

    # --- life cycle -------------------------------------------------------
    def command(self, port: int) -> list[str]:
        return [self.python, "main.py", *(["--cpu"] if self.device == "cpu" else []),
                "--listen", "127.0.0.1", "--port", str(port),
                "--base-directory", str(self.base), "--disable-auto-launch", "--disable-api-nodes",
                "--database-url", "sqlite:///:memory:"]

    def start(self, timeout: float = 240.0, extra_args: list[str] | None = None) -> "ComfyServer":
        if self.process and self.process.poll() is None:
            return self
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = self.command(port) + list(extra_args or [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "DO_NOT_TRACK": "1"}
        env.pop("GLMIMAGE_MODELS_DIR", None)
        self._log = open(self.log_path, "w")
        self._log.write(f"$ (cd {self.comfy_dir} && {' '.join(cmd)})\n")
        self._log.flush()
        self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=5)
                return self
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        proc = self.process
        if proc and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what it started
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if self._log and not self._log.closed:
            self._log.close()

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- HTTP API ---------------------------------------------------------
    def get(self, path: str, timeout: float = 60):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise ComfyError(f"POST {path} -> {err.code}: {err.read().decode(errors='replace')}") from err

    def object_info(self) -> dict:
        return self.get("/object_info")

    def queue_prompt(self, prompt: dict) -> str:
        """Queues an API prompt; a prompt the server rejects raises ComfyError with its node_errors."""
        return self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]

    def wait_for(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """The history entry of a finished prompt; raises ComfyError (with the execution error and
        the server log's tail) when it failed, when the server died, or after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    raise ComfyError(f"prompt {prompt_id} failed: {execution_error(entry)}\n"
                                     f"--- status messages ---\n"
                                     f"{json.dumps(status.get('messages', []), indent=1)[-4000:]}\n"
                                     f"--- server log ---\n{self.log_tail()}")
                return entry
            if self.process is None or self.process.poll() is not None:
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.3)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait_for(self.queue_prompt(prompt), timeout)

    def output_images(self, entry: dict) -> list[Path]:
        """Files of the 'images' a history entry lists (type 'output' or 'temp')."""
        paths = []
        for out in entry.get("outputs", {}).values():
            for img in out.get("images", []):
                root = self.output_dir if img.get("type", "output") == "output" else self.base / "temp"
                paths.append(root / img.get("subfolder", "") / img["filename"])
        return paths


def execution_error(entry: dict) -> str:
    """'NodeType (node id): ExceptionType: message' of a failed history entry, or a short fallback."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"{data.get('node_type')} (node {data.get('node_id')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}")
        if kind == "execution_interrupted":
            return f"interrupted at {data.get('node_type')} (node {data.get('node_id')})"
    return f"status {entry.get('status', {}).get('status_str')!r}"


# --- saved workflow (UI format) -> API prompt -----------------------------------------------
def input_specs(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of a node's inputs, required then optional, in schema order."""
    specs = []
    for group in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(group) or {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, kind, options))
    return specs


def is_widget(kind, options: dict) -> bool:
    """Whether the editor shows the input as a widget (and so saves a value for it)."""
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def extra_widget_values(name: str, kind, options: dict) -> int:
    """Values the editor saves right after a widget's own: the 'control after generate' of an INT
    (explicit option, else any INT named seed/noise_seed) or a COMBO with the option, and the upload
    button of an image/video/audio picker."""
    extra = 0
    is_combo = isinstance(kind, list) or kind == "COMBO"
    if kind == "INT":
        if options.get("control_after_generate", name in ("seed", "noise_seed")):
            extra += 1
    elif is_combo and options.get("control_after_generate"):
        extra += 1
    if options.get("image_upload") or options.get("video_upload") or options.get("audio_upload"):
        extra += 1
    return extra


def widget_values(node: dict, info: dict) -> dict:
    """The node's saved widgets_values mapped onto its widget inputs' names."""
    saved = node.get("widgets_values")
    if isinstance(saved, dict):  # some packs save widgets by name
        names = {name for name, kind, options in input_specs(info) if is_widget(kind, options)}
        return {k: v for k, v in saved.items() if k in names}
    values = list(saved or [])
    out, i = {}, 0
    for name, kind, options in input_specs(info):
        if not is_widget(kind, options):
            continue
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1 + extra_widget_values(name, kind, options)
    return out


def _links_by_id(workflow: dict) -> dict:
    """link id -> (from_node, from_slot, to_node, to_slot, type), for list or object links."""
    out = {}
    for link in workflow.get("links") or []:
        if isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                               link.get("type"))
        else:
            out[link[0]] = tuple(link[1:6])
    return out


def node_id(prompt: dict, class_type: str) -> str:
    """The id of the (first) node of `class_type` in an API prompt."""
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def workflow_to_api_prompt(workflow: dict, object_info: dict) -> dict:
    """A saved UI workflow -> the API prompt `{node_id: {"class_type", "inputs"}}` that /prompt takes.

    Widgets come from widgets_values by position (see widget_values); linked inputs become
    [source_id, slot]. Like the editor: Note/MarkdownNote are dropped, links through Reroutes are
    followed to their source, a PrimitiveNode's value is written into the inputs it feeds, muted
    nodes (mode 2) are dropped, and a bypassed node (mode 4) passes its input of the same type on."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = _links_by_id(workflow)

    def source_of(link_id, seen=()):
        """('link', [id, slot]) or ('value', v) for what a link delivers, or None for nothing."""
        if link_id is None or link_id not in links:
            return None
        from_id, from_slot, _, _, link_type = links[link_id]
        if from_id in seen:
            raise ComfyError(f"link {link_id}: cycle through node {from_id}")
        src = nodes.get(from_id)
        if src is None:
            raise ComfyError(f"link {link_id} comes from node {from_id}, which is not in the workflow")
        mode = src.get("mode", 0)
        if src["type"] == "Reroute":
            return source_of((src.get("inputs") or [{}])[0].get("link"), (*seen, from_id))
        if src["type"] == "PrimitiveNode":
            values = src.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if mode == MODE_MUTED:
            return None
        if mode == MODE_BYPASSED:
            ins = src.get("inputs") or []
            match = [s for s in ins if s.get("link") is not None and s.get("type") == link_type]
            same_slot = [ins[from_slot]] if from_slot < len(ins) and ins[from_slot] in match else []
            for slot in same_slot + match:
                found = source_of(slot["link"], (*seen, from_id))
                if found is not None:
                    return found
            return None
        return ("link", [str(from_id), from_slot])

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise ComfyError(f"node {node['id']}: type {node['type']!r} is not known to the server "
                             f"(a missing custom node pack, or a subgraph, which this converter does not expand)")
        inputs = widget_values(node, info)
        for slot in node.get("inputs") or []:
            found = source_of(slot.get("link"))
            if found is None:
                continue
            name = (slot.get("widget") or {}).get("name") or slot["name"]
            inputs[name] = found[1]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
