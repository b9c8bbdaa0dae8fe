"""The HTTP side of the AR server client: stdlib only (ComfyUI's environment needs no vLLM, no aiohttp).

The server (`python -m glmimage_serve`, glmimage_serve/http_front.py) speaks a small JSON protocol:
  GET  /health                 -> 200 when the engine is up
  GET  /v1/glmimage/info       -> what it serves: architecture, model_type, special ids, vocab size,
                                  max_model_len, dtype, engine version
  POST /v1/glmimage/generate   -> NDJSON, one JSON object a line, flushed as tokens come:
                                  {"event": "start", "prompt_token_ids": [...]}   (as the server expanded them)
                                  {"event": "tokens", "token_ids": [...], "logprobs": [...]}   (new ones only)
                                  {"event": "done", "finish_reason": ..., "source_token_ids": [[...], ...]}
                                  {"event": "error", "message": ...}
Closing the connection aborts the request on the server. A server started with an API key wants
`Authorization: Bearer <key>`; the key comes from the environment variable `API_KEY_ENV` only (never a
node input: saved workflows must carry no secrets).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass

from ..errors import GlmImageServerError

#: Environment variable holding the API key, read by the client here and by the server at start.
API_KEY_ENV = "GLMIMAGE_SERVER_API_KEY"
HEALTH_PATH = "/health"
INFO_PATH = "/v1/glmimage/info"
GENERATE_PATH = "/v1/glmimage/generate"
#: Seconds to connect and to get the info answer (a dead or wrong URL fails well within ~10 s).
CONNECT_TIMEOUT_S = 8.0
#: Seconds the stream may stay silent (a busy server queues requests; the first one also warms it up).
READ_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ServerAddress:
    url: str  # as the user typed it, for messages
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        text = (url or "").strip()
        if not text:
            raise GlmImageServerError("server_url is empty: give the AR server's address, e.g. "
                                      "http://127.0.0.1:8000 (start it with python -m glmimage_serve)")
        if "://" not in text:
            text = "http://" + text
        parts = urllib.parse.urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GlmImageServerError(f"server_url {url!r} is not an http(s) address like http://127.0.0.1:8000")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as err:
            raise GlmImageServerError(f"server_url {url!r} has a bad port: {err}") from err
        return cls(url.strip(), parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)


def _headers(body: bool = False) -> dict:
    headers = {"Accept": "application/json"}
    if body:
        headers["Content-Type"] = "application/json"
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _refusal(address: ServerAddress, status: int, text: str, what: str) -> GlmImageServerError:
    try:
        detail = json.loads(text).get("error") or json.loads(text).get("detail") or text
    except (ValueError, AttributeError):
        detail = text
    detail = str(detail).strip()[:500]
    if status == 401:
        hint = (f"it wants an API key: set the environment variable {API_KEY_ENV} for ComfyUI to the key the "
                "server was started with")
    elif status == 404:
        hint = "nothing there speaks the GLM-Image AR protocol: is this the address of python -m glmimage_serve?"
    else:
        hint = detail or "see the server's log"
    return GlmImageServerError(f"the AR server at {address.url} answered {what} with HTTP {status}: {hint}")


def get_info(address: ServerAddress, timeout: float = CONNECT_TIMEOUT_S) -> dict:
    """GET the info endpoint: what the server serves. Every failure names the URL."""
    conn = address.connection(timeout)
    try:
        conn.request("GET", address.base_path + INFO_PATH, headers=_headers())
        response = conn.getresponse()
        text = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as err:
        raise GlmImageServerError(
            f"no AR server answers at {address.url} ({type(err).__name__}: {err}). Start one with "
            f"python -m glmimage_serve --model <folder> --port {address.port} (see the README, 'AR on a server'), "
            "or fix server_url") from err
    finally:
        conn.close()
    if response.status != 200:
        raise _refusal(address, response.status, text, f"GET {INFO_PATH}")
    try:
        info = json.loads(text)
    except ValueError as err:
        raise GlmImageServerError(f"the server at {address.url} answered GET {INFO_PATH} with something that is "
                                  f"not JSON ({text[:80]!r}): is this the address of python -m glmimage_serve?") from err
    if not isinstance(info, dict) or "model_type" not in info:
        raise GlmImageServerError(f"the server at {address.url} answered GET {INFO_PATH} without a model_type: "
                                  "is this the address of python -m glmimage_serve?")
    return info


class TokenStream:
    """One streaming generate request. Iterate for events; `close()` (any thread) drops the connection,
    which makes the server abort the request."""

    def __init__(self, address: ServerAddress, body: dict, timeout: float = READ_TIMEOUT_S) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._closed = False
        self._conn = address.connection(CONNECT_TIMEOUT_S)
        try:
            self._conn.request("POST", address.base_path + GENERATE_PATH, body=json.dumps(body).encode(),
                               headers=_headers(body=True))
            if self._conn.sock is not None:
                self._conn.sock.settimeout(timeout)
            self._response = self._conn.getresponse()
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise GlmImageServerError(f"could not send the request to the AR server at {address.url} "
                                      f"({type(err).__name__}: {err}): is it still running?") from err
        if self._response.status != 200:
            text = self._response.read().decode("utf-8", "replace")
            self.close()
            raise _refusal(address, self._response.status, text, f"POST {GENERATE_PATH}")

    def __iter__(self):
        while True:
            try:
                line = self._response.readline()
            except (OSError, http.client.HTTPException, ValueError) as err:
                if self._closed:
                    return
                raise GlmImageServerError(f"lost the AR server at {self.address.url} while it was sampling "
                                          f"({type(err).__name__}: {err}): did it stop? Restart it and queue the "
                                          "prompt again") from err
            if not line:
                return  # the caller decides whether the stream had ended properly
            line = line.strip()
            if line:
                yield json.loads(line)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        sock = self._conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader blocked in recv, in another thread
            except OSError:
                pass
        self._conn.close()
