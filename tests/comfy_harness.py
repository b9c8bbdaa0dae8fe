"""A real ComfyUI server for the tests, and saved (UI) workflows turned into API prompts.

The server is the ComfyUI tree that scripts/setup_env.sh unpacks into .cache/comfyui,
started with --cpu on 127.0.0.1 with a temporary base directory (models, input, output,
custom_nodes) into which this repo is linked as a custom node pack.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("GLMIMAGE_COMFYUI_DIR", REPO / ".cache" / "comfyui"))
PACK_NAME = "ComfyUI-GLM-Image"
UI_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class ComfyError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, base: Path, comfy_dir: Path = COMFYUI_DIR) -> None:
        if not (comfy_dir / "main.py").is_file():
            raise ComfyError(f"no ComfyUI at {comfy_dir}: run scripts/setup_env.sh (or set GLMIMAGE_COMFYUI_DIR)")
        self.comfy_dir, self.base = comfy_dir, base
        for sub in ("custom_nodes", "models/glm_image", "input", "output", "temp", "user"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        self.models_dir = base / "models" / "glm_image"
        self.input_dir, self.output_dir = base / "input", base / "output"
        self.log_path = base / "comfyui.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    # --- life cycle ---------------------------------------------------
    def start(self, timeout: float = 180.0) -> "ComfyServer":
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(self.base), "--disable-auto-launch",
               "--database-url", "sqlite:///:memory:"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("GLMIMAGE_MODELS_DIR", None)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- HTTP API -----------------------------------------------------
    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
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
        return self.post("/prompt", {"prompt": prompt, "client_id": str(uuid.uuid4())})["prompt_id"]

    def wait_for(self, prompt_id: str, timeout: float = 600.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    messages = json.dumps(status.get("messages", []), indent=1)[-4000:]
                    raise ComfyError(f"prompt {prompt_id} failed: {messages}\n--- server log ---\n"
                                     f"{self.log_tail()}")
                return entry
            if self.process.poll() is not None:
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.5)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait_for(self.queue_prompt(prompt), timeout)


# --- saved workflow (UI format) -> API prompt -----------------------------
def input_specs(info: dict) -> list[tuple[str, object, dict]]:
    """(name, type, options) of a node's inputs, required then optional, in schema order."""
    specs = []
    for group in ("required", "optional"):
        for name, spec in info["input"].get(group, {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, kind, options))
    return specs


def is_widget(kind, options: dict) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def extra_widget_values(name: str, kind, options: dict) -> int:
    """Values the editor saves after a widget's own: a seed's 'control after generate', an upload button."""
    extra = 0
    if options.get("control_after_generate") or (kind == "INT" and name in ("seed", "noise_seed")):
        extra += 1
    if options.get("image_upload") or options.get("video_upload") or options.get("audio_upload"):
        extra += 1
    return extra


def widget_values(node: dict, info: dict) -> dict:
    values = list(node.get("widgets_values") or [])
    if isinstance(node.get("widgets_values"), dict):
        return dict(node["widgets_values"])
    out, i = {}, 0
    for name, kind, options in input_specs(info):
        if not is_widget(kind, options):
            continue
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1 + extra_widget_values(name, kind, options)
    return out


def workflow_to_api_prompt(workflow: dict, object_info: dict) -> dict:
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY_TYPES or node.get("mode", 0) in (2, 4):
            continue
        if node["type"] not in object_info:
            raise ComfyError(f"node {node['id']}: type {node['type']!r} is not known to the server")
        inputs = widget_values(node, object_info[node["type"]])
        for slot in node.get("inputs", []):
            link_id = slot.get("link")
            if link_id is not None:
                _, from_node, from_slot, *_ = links[link_id]
                inputs[slot["name"]] = [str(from_node), from_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt
