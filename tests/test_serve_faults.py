"""Faults and bad input with a real AR server: no server, wrong URL, API key, another model, a server too small
for the size, cancel (the server stops computing), the server killed mid-request and restarted.

The kill test runs last in this module: it restarts the session's server (tests/conftest.py's `ar_server`).
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from glmimage_core.ar.remote import RemoteSampling, generate_tokens_remote
from glmimage_core.ar.remote_http import API_KEY_ENV
from glmimage_core.ar.loading import load_ar_model
from glmimage_core.ar.chat_prompt import prepare_inputs
from glmimage_core.demo.models import build_tiny_ar_model
from glmimage_core.errors import GlmImageServerError
from glmimage_core.shapes import GridShape
from tests.serve_harness import MAX_MODEL_LEN, free_port

GREEDY = RemoteSampling(do_sample=False)
#: 1280 tokens (preview + 32 x 32 grid): seconds of work for the tiny model on the CPU.
LONG = GridShape(32, 32)


def _inputs(ar, shape=GridShape(3, 3), prompt="a boat"):
    inputs = prepare_inputs(ar.processor, prompt, shape=shape)
    inputs.model_identity = ar.identity()
    return inputs


def test_no_server_is_a_clear_error_naming_the_url_within_seconds(ar):
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(GlmImageServerError, match="no AR server answers at " + url) as err:
        generate_tokens_remote(url, _inputs(ar), sampling=GREEDY)
    assert time.monotonic() - t0 < 10
    assert "python -m glmimage_serve" in str(err.value)


def test_a_url_that_is_not_an_ar_server_is_refused_naming_it(ar, ar_server):
    wrong = ar_server.url + "/not-here"
    with pytest.raises(GlmImageServerError, match=f"{wrong}.*HTTP 404.*glmimage_serve"):
        generate_tokens_remote(wrong, _inputs(ar), sampling=GREEDY)
    with pytest.raises(GlmImageServerError, match="not an http"):
        generate_tokens_remote("ftp://127.0.0.1:1", _inputs(ar), sampling=GREEDY)


def test_the_api_key_comes_from_the_environment(ar, ar_server, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(GlmImageServerError, match=f"HTTP 401.*{API_KEY_ENV}"):
        generate_tokens_remote(ar_server.url, _inputs(ar), sampling=GREEDY)
    monkeypatch.setenv(API_KEY_ENV, "not-the-key")
    with pytest.raises(GlmImageServerError, match="HTTP 401"):
        generate_tokens_remote(ar_server.url, _inputs(ar), sampling=GREEDY)
    monkeypatch.setenv(API_KEY_ENV, ar_server.api_key)
    assert generate_tokens_remote(ar_server.url, _inputs(ar), sampling=GREEDY).sequences.shape[0] == 1


def test_a_server_with_another_model_is_refused_naming_what_it_serves(ar_server, tmp_path):
    other = load_ar_model(str(build_tiny_ar_model(tmp_path / "other", codebook=32)), dtype="fp32", device="cpu")
    with pytest.raises(GlmImageServerError, match=r"serves another model: GlmImageForConditionalGeneration from "
                                                  r"'.*' with .*codebook_size 64.*codebook_size 32"):
        generate_tokens_remote(ar_server.url, _inputs(other), sampling=GREEDY)


def test_a_size_beyond_the_servers_max_model_length_is_refused(ar, ar_server):
    big = _inputs(ar, GridShape(48, 48))
    with pytest.raises(GlmImageServerError, match=f"max model length {MAX_MODEL_LEN} tokens.*1536x1536"):
        generate_tokens_remote(ar_server.url, big, sampling=GREEDY)


def _interrupt_after(tokens: int, progress):
    """A cancel button pressed once `tokens` tokens have come (what ComfyUI's interrupt does to the node)."""
    class Cancelled(Exception):
        pass

    def check():
        if progress.current >= tokens:
            raise Cancelled()
    return check, Cancelled


class _Counter:
    def __init__(self):
        self.current = 0

    def update(self, n=1):
        self.current += n


def _cpu_rate(server, seconds: float = 2.0) -> float:
    start, t0 = server.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu_seconds() - start) / (time.monotonic() - t0)


def test_cancel_aborts_the_request_and_the_server_stops_computing(ar, ar_server):
    inputs = _inputs(ar, LONG)
    progress = _Counter()
    check, cancelled = _interrupt_after(30, progress)
    t0, cpu0 = time.monotonic(), ar_server.cpu_seconds()
    with pytest.raises(cancelled):  # 8 pictures of 1281 tokens: 10248 tokens, cancelled after ~30 each
        generate_tokens_remote(ar_server.url, inputs, sampling=GREEDY, images=8, progress=progress,
                               check_interrupted=check)
    busy = (ar_server.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    time.sleep(1.0)  # the abort reaches the engine
    idle = _cpu_rate(ar_server, 2.0)
    print(f"CANCEL after {progress.current} of {inputs.shape.max_new_tokens('t2i')} tokens each, "
          f"{time.monotonic() - t0:.1f} s; server CPU while computing {busy:.2f} s/s, after cancel {idle:.2f} s/s")
    assert progress.current < inputs.shape.max_new_tokens("t2i")
    assert idle < 0.35 and idle < busy / 2, "the server still computes after the cancel"
    # and it serves the next request normally
    assert generate_tokens_remote(ar_server.url, _inputs(ar), sampling=GREEDY).sequences.shape[0] == 1


def test_server_killed_mid_request_is_a_clear_error_and_a_restarted_server_serves(ar, ar_server):
    inputs = _inputs(ar, LONG)
    progress = _Counter()
    killer = threading.Thread(target=lambda: (_wait_for(lambda: progress.current >= 20), ar_server.kill()))
    killer.start()
    with pytest.raises(GlmImageServerError, match=f"{ar_server.url}.*(closed the stream|lost the AR server)"):
        generate_tokens_remote(ar_server.url, inputs, sampling=GREEDY, images=8, progress=progress,
                               check_interrupted=None)
    killer.join()
    with pytest.raises(GlmImageServerError, match="no AR server answers"):
        generate_tokens_remote(ar_server.url, _inputs(ar), sampling=GREEDY)
    ar_server.start()  # same URL
    again = generate_tokens_remote(ar_server.url, _inputs(ar), sampling=GREEDY)
    assert again.sequences.shape == (1, GridShape(3, 3).max_new_tokens("t2i"))
    assert torch.all(again.sequences[0, :-1] < again.codebook_size)


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
