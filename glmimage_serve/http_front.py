"""A thin HTTP front over vLLM-Omni's async engine (`AsyncOmni`) for the pack's node.

Why not vLLM-Omni's own OpenAI server (`vllm serve --omni`)? It serves the AR-only pipeline, but
  - it does not return the source images' token ids over HTTP (only audio / image outputs become response
    fields), and image-to-image needs them to decode with the DiT;
  - it imports torchaudio unconditionally, which does not load in a CPU-only environment (the index carries
    CUDA builds only), so the tests' CPU server could not start it;
  - its chat endpoint (the only one taking pictures) drops logprobs and target-size extras.
So this front does the least: parse the request, call `AsyncOmni.generate`, stream what comes back. The
engine, the scheduler, continuous batching and the KV cache are vLLM's. Protocol: see
glmimage_core/ar/remote_http.py (the client) -- paths and event names must stay equal (tests check).

A client that disconnects cancels its streaming generator; AsyncOmni then aborts the engine request.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import io
import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

log = logging.getLogger("glmimage_serve")

#: Same names as the client's (glmimage_core/ar/remote_http.py).
API_KEY_ENV = "GLMIMAGE_SERVER_API_KEY"
HEALTH_PATH = "/health"
INFO_PATH = "/v1/glmimage/info"
GENERATE_PATH = "/v1/glmimage/generate"
#: transformers' `generate` default top_k when the model's generation config sets none.
TRANSFORMERS_TOP_K = 50


class BadRequest(ValueError):
    pass


def _pictures(encoded: list) -> list:
    from PIL import Image

    out = []
    for i, item in enumerate(encoded):
        try:
            out.append(Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB"))
        except Exception as err:  # noqa: BLE001 - any decoding failure is the client's
            raise BadRequest(f"images[{i}] is not a base64 PNG/JPEG: {err}") from err
    return out


def sampling_params(body: dict, info: dict, generation: dict):
    """The request's settings as vLLM `SamplingParams`: 0 = the model's own value, do_sample off = greedy;
    the target size always goes in `extra_args` (else the decode positions assume 1024x1024)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampling = body.get("sampling") or {}
    target = {"target_h": int(body["target_h"]), "target_w": int(body["target_w"])}
    kwargs: dict = {"temperature": 0.0}
    if sampling.get("do_sample", True):
        kwargs = {"temperature": float(sampling.get("temperature") or generation.get("temperature") or 1.0),
                  "top_p": float(sampling.get("top_p") or generation.get("top_p") or 1.0),
                  "top_k": int(sampling.get("top_k") or generation.get("top_k") or TRANSFORMERS_TOP_K)}
    seed = body.get("seed")
    logprobs = body.get("logprobs")
    return SamplingParams(
        **kwargs, max_tokens=int(body["max_tokens"]),
        seed=None if seed is None else int(seed) & 0x7FFF_FFFF_FFFF_FFFF,
        logprobs=None if logprobs is None else int(logprobs),
        stop_token_ids=[int(info["image_end_token_id"])], detokenize=False, extra_args=target,
        output_kind=RequestOutputKind.DELTA)


def _validate(body: dict, info: dict) -> list[int]:
    for key in ("prompt_token_ids", "target_h", "target_w", "max_tokens"):
        if key not in body:
            raise BadRequest(f"the request lacks {key!r}")
    ids = body["prompt_token_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(v, int) for v in ids):
        raise BadRequest("prompt_token_ids must be a non-empty list of ints")
    vocab = int(info["vocab_size"])
    if max(ids) >= vocab or min(ids) < 0:
        raise BadRequest(f"prompt_token_ids holds ids outside 0..{vocab - 1}: the client's model is not "
                         f"the one this server serves ({info['model']})")
    need = len(ids) + int(body["max_tokens"])
    if need > int(info["max_model_len"]):
        raise BadRequest(f"{need} tokens (prompt + max_tokens) exceed this server's max model length "
                         f"{info['max_model_len']} ({info['model']}): restart it with a larger --max-model-len")
    return ids


def _token_event(completion) -> dict:
    ids = [int(v) for v in completion.token_ids]
    event: dict = {"event": "tokens", "token_ids": ids}
    if completion.logprobs:
        event["logprobs"] = [float(step[tok].logprob) for step, tok in zip(completion.logprobs[-len(ids):], ids)]
    return event


def _source_ids(output) -> list | None:
    """The source images' ids (d16) from the stage's multimodal output: one flat list for all of the request's
    pictures (model.py regroups them by request; the client splits by the sizes it knows), or one per picture
    (vLLM-Omni's own layout). None when the output carries none or an empty one."""
    for holder in (output, getattr(output, "request_output", None)):
        mm = getattr(holder, "multimodal_output", None) or getattr(holder, "_multimodal_output", None)
        if not mm:
            continue
        ids = mm.get("ids.prior_image")
        if ids is None and isinstance(mm.get("ids"), dict):
            ids = mm["ids"].get("prior_image")
        if ids is not None:
            items = ids if isinstance(ids, (list, tuple)) else [ids]
            lists = [[int(v) for v in item.reshape(-1).tolist()] for item in items]
            return lists if any(lists) else None
    return None


def build_app(omni, info: dict, generation: dict, api_key: str | None) -> FastAPI:
    app = FastAPI(title="GLM-Image AR server (vLLM-Omni)")

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path != HEALTH_PATH:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse({"error": f"missing or wrong API key (Authorization: Bearer ...; the pack's "
                                              f"node reads it from {API_KEY_ENV})"}, status_code=401)
        return await call_next(request)

    @app.get(HEALTH_PATH)
    async def health():
        return {"status": "ok"}

    @app.get(INFO_PATH)
    async def get_info():
        return info

    @app.post(GENERATE_PATH)
    async def generate(request: Request):
        try:
            body = await request.json()
            ids = _validate(body, info)
            params = sampling_params(body, info, generation)
            pictures = _pictures(body.get("images") or [])
        except (BadRequest, KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        prompt: dict = {"prompt_token_ids": ids,
                        "mm_processor_kwargs": {"target_h": params.extra_args["target_h"],
                                                "target_w": params.extra_args["target_w"]}}
        request_id = f"glmimage-{uuid.uuid4().hex}"
        if pictures:
            prompt["multi_modal_data"] = {"image": pictures if len(pictures) > 1 else pictures[0]}
            # A picture id of this request's own: vLLM would otherwise reuse the encoder output of an equal
            # picture (same content hash) from another request, the model would not quantise it again, and
            # this request would get no source-image ids (4 pictures per run send the same source 4 times).
            prompt["multi_modal_uuids"] = {"image": [f"{request_id}-{i}" for i in range(len(pictures))]}
        return StreamingResponse(_stream(omni, prompt, params, request_id, bool(pictures)),
                                 media_type="application/x-ndjson")

    return app


#: Seconds the front gathers a request's new tokens before it sends them: one NDJSON line per engine step
#: and request would cost more than the step itself on a small model; the node previews a few times a second.
FLUSH_INTERVAL_S = 0.05


async def _stream(omni, prompt: dict, params, request_id: str, with_pictures: bool = False):
    """NDJSON lines as the engine produces tokens. Cancelled (client gone) -> AsyncOmni aborts the request.
    Source ids are taken once (the step that encoded this request's pictures), and only for a request
    with pictures."""
    started = False
    sources = None
    finish = None
    ids: list[int] = []
    logprobs: list[float] = []
    last = time.monotonic()
    try:
        async for output in omni.generate(prompt, params, request_id):
            if not started:
                started = True
                yield json.dumps({"event": "start", "request_id": request_id,
                                  "prompt_token_ids": list(output.prompt_token_ids or [])}) + "\n"
            if with_pictures and sources is None:
                sources = _source_ids(output)
            if output.outputs:
                completion = output.outputs[0]
                if completion.token_ids:
                    event = _token_event(completion)
                    ids += event["token_ids"]
                    logprobs += event.get("logprobs", [])
                finish = completion.finish_reason or finish
            if ids and time.monotonic() - last >= FLUSH_INTERVAL_S:
                yield _tokens_line(ids, logprobs)
                ids, logprobs, last = [], [], time.monotonic()
        if ids:
            yield _tokens_line(ids, logprobs)
        yield json.dumps({"event": "done", "finish_reason": finish, "source_token_ids": sources or []}) + "\n"
    except asyncio.CancelledError:
        log.info("request %s: client went away, aborted", request_id)
        raise
    except Exception as err:  # noqa: BLE001 - reported to the client in the stream
        log.exception("request %s failed", request_id)
        yield json.dumps({"event": "error", "message": f"{type(err).__name__}: {err}"}) + "\n"


def _tokens_line(ids: list[int], logprobs: list[float]) -> str:
    event: dict = {"event": "tokens", "token_ids": ids}
    if logprobs:
        event["logprobs"] = logprobs
    return json.dumps(event) + "\n"
