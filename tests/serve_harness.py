"""A real GLM-Image AR server (python -m glmimage_serve: vLLM-Omni on the CPU) for the tests.

It runs in its own environment, .cache/venv-vllm-omni (scripts/setup_vllm.sh), never in the tests' Python:
vLLM pins its own torch and transformers. The tests start ONE per session (tests/conftest.py's `ar_server`)
with the session's tiny AR model, so the local node and the server serve the same weights. The session's
server wants an API key (API_KEY below, exported as GLMIMAGE_SERVER_API_KEY for the client and any ComfyUI
the tests start), so every test also goes through the key check.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("GLMIMAGE_VLLM_VENV", REPO / ".cache" / "venv-vllm-omni"))
PYTHON = VENV / "bin" / "python"
API_KEY = "glmimage-tests-key"
#: The tests' server: max model length 2048 (a 1536 px square asks for more: refused, as tested).
MAX_MODEL_LEN = 2048


class ServeError(RuntimeError):
    pass


def missing_reason() -> str | None:
    if not PYTHON.exists():
        return f"the AR server's environment {VENV} is missing: run scripts/setup_vllm.sh"
    if not (VENV / ".glmimage-stamp").is_file():
        return f"the AR server's environment {VENV} is incomplete: rerun scripts/setup_vllm.sh"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ArServer:
    """One `python -m glmimage_serve` process (in a session of its own, so stopping it stops its engine)."""

    def __init__(self, model: Path, log_path: Path, max_model_len: int = MAX_MODEL_LEN,
                 api_key: str | None = API_KEY) -> None:
        self.model, self.log_path = Path(model), Path(log_path)
        self.max_model_len, self.api_key = max_model_len, api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    def command(self) -> list[str]:
        return [str(PYTHON), "-m", "glmimage_serve", "--model", str(self.model), "--device", "cpu",
                "--dtype", "float32", "--max-model-len", str(self.max_model_len), "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning"]

    def start(self, timeout: float = 420.0) -> "ArServer":
        reason = missing_reason()
        if reason:
            raise ServeError(reason)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.pop("GLMIMAGE_SERVER_API_KEY", None)
        if self.api_key:
            env["GLMIMAGE_SERVER_API_KEY"] = self.api_key
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"})
        log = open(self.log_path, "a")
        log.write(f"$ {' '.join(self.command())}\n")
        log.flush()
        t0 = time.monotonic()
        self.process = subprocess.Popen(self.command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        atexit.register(self.stop)
        while time.monotonic() - t0 < timeout:
            if self.process.poll() is not None:
                raise ServeError(f"the AR server exited with {self.process.returncode} while starting:\n"
                                 f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        self.start_seconds = time.monotonic() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ServeError(f"the AR server did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and its engine processes (a crash, as a test wants it)."""
        if self.alive():
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        try:  # engine processes left in the session
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def info(self) -> dict:
        request = urllib.request.Request(self.url + "/v1/glmimage/info",
                                         headers={"Authorization": f"Bearer {self.api_key}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every live process of the server's session."""
        if not self.alive():
            return 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.process.pid:  # session id (field 6 of stat)
                total += int(fields[11]) + int(fields[12])
        return total / ticks
