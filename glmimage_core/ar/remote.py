"""Image tokens from a GLM-Image AR server: the same `GeneratedTokens` as the local `generate_tokens`.

The server (`python -m glmimage_serve`, in its own environment) runs GLM-Image's AR model on vLLM-Omni:
continuous batching, paged KV cache, CUDA graphs, tensor / data parallel. This side stays plain Python
(stdlib HTTP, remote_http.py), so ComfyUI's environment needs no vLLM. Several pictures per run are
several requests sent at once, picture i with seed + i as the local node does; the server batches them.
Greedy runs give the local model's ids (tests/serve checks ids and logprobs); seeded sampling is
reproducible on the server (vLLM's per-request generator) but draws other ids than transformers.

What is sent: the prompt ids the local processor made (for image-to-image, each source's run of image
placeholders collapsed to one, which the server's processor expands again from the picture), the
resized source pictures as PNG, the target size in pixels and the sampling settings. The server answers
with the prompt ids as it expanded them, which must equal the local ones: a server with another
tokenizer or image processor is refused before any sampling.
"""

from __future__ import annotations

import base64
import io
import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from ..errors import GlmImageInputError, GlmImageServerError
from ..memory.host import host
from ..payloads import GeneratedTokens, GlmImageInputs
from ..tokens.grid_preview import LiveGridPreview
from .generation import (  # as the local node: pictures per run, report rate
    MAX_IMAGES,
    REPORT_INTERVAL_S,
)
from .remote_http import READ_TIMEOUT_S, ServerAddress, TokenStream, get_info
from .seeded_batch import derived_seeds

#: `check_interrupted`'s default: the host's cancel button (ComfyUI's inside ComfyUI).
HOST_CANCEL = object()
#: The architecture the server must serve.
ARCHITECTURE = "GlmImageForConditionalGeneration"


@dataclass(frozen=True)
class RemoteSampling:
    """The local node's settings: 0 for temperature / top_p / top_k = the model's generation_config
    value (the server reads it; top_k unset there = transformers' default 50, as `generate` uses)."""

    do_sample: bool = True
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0

    def as_json(self) -> dict:
        return {"do_sample": bool(self.do_sample), "temperature": float(self.temperature),
                "top_p": float(self.top_p), "top_k": int(self.top_k)}


@dataclass
class _Run:
    """One request (one picture) and what has come back so far."""

    seed: int
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_ids: list[int] | None = None
    sources: list[list[int]] | None = None
    done: bool = False
    stream: TokenStream | None = None


def check_served_model(info: dict, address: ServerAddress, inputs: GlmImageInputs, max_new: int) -> None:
    """Refuse a server that serves another model, or one too small for this prompt and size."""
    served = f"{info.get('architecture')} from {info.get('model')!r}"
    if info.get("architecture") != ARCHITECTURE or info.get("model_type") != "glm_image":
        raise GlmImageServerError(f"the server at {address.url} serves {served} (model_type "
                                  f"{info.get('model_type')!r}), not GLM-Image's AR model ({ARCHITECTURE}): "
                                  "start it with a GLM-Image folder, or fix server_url")
    mine = inputs.model_identity or {}
    differs = {k: (v, info.get(k)) for k, v in mine.items() if info.get(k) != v}
    if differs:
        theirs = ", ".join(f"{k} {info.get(k)}" for k in differs)
        ours = ", ".join(f"{k} {v[0]}" for k, v in differs.items())
        raise GlmImageServerError(f"the server at {address.url} serves another model: {served} with {theirs}; "
                                  f"the prompt node's AR model has {ours}. Start the server with the same model "
                                  "folder, or load that one in the prompt node")
    ids = inputs.model_inputs["input_ids"]
    vocab = int(info.get("vocab_size") or 0)
    if vocab and int(ids.max()) >= vocab:
        raise GlmImageServerError(f"the server at {address.url} serves {served} with a vocabulary of {vocab} ids, "
                                  f"but this prompt uses id {int(ids.max())}: the prompt node's AR model is another "
                                  "model than the server's; load the same model in both")
    need = inputs.input_length + max_new
    have = int(info.get("max_model_len") or 0)
    if have and need > have:
        raise GlmImageServerError(
            f"the server at {address.url} serves {served} with max model length {have} tokens, but "
            f"{inputs.shape.describe()} needs {need} ({inputs.input_length} prompt + {max_new} to sample): "
            "restart it with a larger --max-model-len, or choose a smaller size")


def _png(pixels: torch.Tensor) -> str:
    from PIL import Image

    array = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def request_prompt_ids(inputs: GlmImageInputs, image_token_id: int) -> list[int]:
    """The prompt ids to send: for image-to-image each run of `image_token_id` collapsed to one."""
    ids = [int(v) for v in inputs.model_inputs["input_ids"].reshape(-1)]
    if inputs.mode != "i2i":
        return ids
    out: list[int] = []
    for v in ids:
        if v == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(v)
    if out.count(image_token_id) != len(inputs.sources):
        raise GlmImageInputError(f"the prompt holds {out.count(image_token_id)} image places for "
                                 f"{len(inputs.sources)} source images: the prompt node's processor is not "
                                 "GLM-Image's")
    return out


def _body(inputs: GlmImageInputs, prompt_ids: list[int], max_new: int, seed: int, sampling: RemoteSampling,
          logprobs: int | None) -> dict:
    return {"prompt_token_ids": prompt_ids, "images": [_png(s.pixels) for s in inputs.sources],
            "target_h": inputs.shape.height, "target_w": inputs.shape.width, "max_tokens": max_new,
            "seed": seed, "sampling": sampling.as_json(), "logprobs": logprobs}


def _pump(run: _Run, events: queue.Queue) -> None:
    """Reader thread: every event of one stream onto the shared queue; then a final (run, None)."""
    try:
        for event in run.stream:
            events.put((run, event))
        events.put((run, None))
    except BaseException as err:  # noqa: BLE001 - handed to the main thread
        events.put((run, err))


def generate_tokens_remote(server_url: str, inputs: GlmImageInputs, seed: int = 0,
                           sampling: RemoteSampling = RemoteSampling(), images: int = 1, progress=None,
                           check_interrupted=HOST_CANCEL, logprobs: int | None = None,
                           info: dict | None = None, read_timeout: float = READ_TIMEOUT_S) -> GeneratedTokens:
    """Sample `images` pictures for `inputs` on the server: request i with seed + i, all at once.

    `progress` (default: ComfyUI's progress bar inside ComfyUI) gets `update(n)`, or, when it has
    `update_absolute` (ComfyUI's), the live grid of the first picture as the local node sends it
    (fixed hues: the codebook lives on the server). `check_interrupted` (default: ComfyUI's cancel
    button) is called while waiting and raises to cancel: every request's connection is then closed,
    which aborts it on the server. `logprobs=0` adds each sampled id's log-probability
    (`GeneratedTokens.logprobs`). `read_timeout`: seconds a stream may stay silent before the request
    counts as lost.
    """
    if seed < 0 or seed > 0xFFFF_FFFF_FFFF_FFFF:
        raise GlmImageInputError(f"seed {seed} is out of range: use 0 .. 2**64-1")
    if not 1 <= images <= MAX_IMAGES:
        raise GlmImageInputError(f"images={images}: choose 1 .. {MAX_IMAGES} pictures per run")
    address = ServerAddress.parse(server_url)
    max_new = inputs.shape.max_new_tokens(inputs.mode)
    info = info if info is not None else get_info(address)
    check_served_model(info, address, inputs, max_new)
    prompt_ids = request_prompt_ids(inputs, int(info["image_token_id"]))
    progress = progress if progress is not None else host().progress_bar(max_new)
    if check_interrupted is HOST_CANCEL:
        check_interrupted = host().check_interrupted
    preview = None
    if callable(getattr(progress, "update_absolute", None)):
        preview = LiveGridPreview(inputs.shape, inputs.mode, int(info["codebook_size"]), None,
                                  max_px=host().preview_size()).render
    runs = [_Run(seed=s) for s in derived_seeds(seed, images)]
    events: queue.Queue = queue.Queue()
    threads = []
    try:
        for run in runs:
            run.stream = TokenStream(address, _body(inputs, prompt_ids, max_new, run.seed, sampling, logprobs),
                                     timeout=read_timeout)
            threads.append(threading.Thread(target=_pump, args=(run, events), daemon=True,
                                            name="glmimage-remote-stream"))
            threads[-1].start()
        _collect(runs, events, address, inputs, max_new, progress, preview, check_interrupted)
    finally:
        for run in runs:
            if run.stream is not None:
                run.stream.close()
    return _payload(runs, inputs, info, logprobs is not None)


def _collect(runs: list[_Run], events: queue.Queue, address: ServerAddress, inputs: GlmImageInputs,
             max_new: int, progress, preview, check_interrupted) -> None:
    """Main thread: apply events until every run is done; report progress; honour cancel."""
    pending, reported, last = len(runs), 0, 0.0
    while pending:
        if check_interrupted is not None:
            check_interrupted()
        try:
            run, event = events.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(event, BaseException):
            raise event
        if event is None:
            if not run.done:
                raise GlmImageServerError(
                    f"the AR server at {address.url} closed the stream of seed {run.seed} after {len(run.ids)} "
                    f"of {max_new} tokens without finishing: did it stop or crash? Restart it and queue the "
                    "prompt again")
            pending -= 1
            continue
        kind = event.get("event")
        if kind == "error":
            raise GlmImageServerError(f"the AR server at {address.url} failed on seed {run.seed}: "
                                      f"{event.get('message')}")
        if kind == "start":
            run.prompt_ids = [int(v) for v in event.get("prompt_token_ids") or []]
            _check_prompt(run.prompt_ids, inputs, address)
        elif kind == "tokens":
            run.ids.extend(int(v) for v in event.get("token_ids", []))
            run.logprobs.extend(float(v) for v in event.get("logprobs") or [])
        elif kind == "done":
            run.done = True
            run.sources = event.get("source_token_ids") or []
        now = time.monotonic()
        sampled = min(len(r.ids) for r in runs)
        if progress is not None and sampled > reported and (reported == 0 or sampled >= max_new
                                                             or now - last >= REPORT_INTERVAL_S):
            _report(progress, preview, runs[0].ids, sampled, reported, max_new)
            reported, last = sampled, now
    if progress is not None and reported < max_new:
        _report(progress, preview, runs[0].ids, max(min(len(r.ids) for r in runs), reported), reported, max_new)


def _report(progress, preview, first_ids: list[int], sampled: int, reported: int, total: int) -> None:
    if preview is not None and reported > 0 and callable(getattr(progress, "update_absolute", None)):
        image = preview(torch.tensor(first_ids, dtype=torch.long))
        progress.update_absolute(sampled, total, ("JPEG", image, max(image.size)))
    else:
        progress.update(sampled - reported)


def _check_prompt(server_ids: list[int], inputs: GlmImageInputs, address: ServerAddress) -> None:
    local = [int(v) for v in inputs.model_inputs["input_ids"].reshape(-1)]
    if server_ids and server_ids != local:
        raise GlmImageServerError(
            f"the AR server at {address.url} expanded the prompt to {len(server_ids)} ids, the prompt node to "
            f"{len(local)} (first difference at position "
            f"{next((i for i, (a, b) in enumerate(zip(server_ids, local)) if a != b), min(len(server_ids), len(local)))}"
            "): its processor is not the prompt node's model's; load the same model in both")


def _payload(runs: list[_Run], inputs: GlmImageInputs, info: dict, with_logprobs: bool) -> GeneratedTokens:
    end_id = int(info["image_end_token_id"])
    length = max(len(r.ids) for r in runs)
    rows = torch.full((len(runs), length), end_id, dtype=torch.long)
    for i, run in enumerate(runs):
        rows[i, :len(run.ids)] = torch.tensor(run.ids, dtype=torch.long)
    logprobs = None
    if with_logprobs:
        logprobs = torch.full((len(runs), length), float("nan"), dtype=torch.float64)
        for i, run in enumerate(runs):
            logprobs[i, :len(run.logprobs)] = torch.tensor(run.logprobs, dtype=torch.float64)
    grids = [_source_grids(run.sources or [], inputs) for run in runs]  # each request reports the same sources
    if any(len(g) != len(grids[0]) or not all(torch.equal(a, b) for a, b in zip(g, grids[0])) for g in grids):
        raise GlmImageServerError("the AR server returned different source-image ids for the same source images "
                                  "in one run: is it an older glmimage_serve?")
    return GeneratedTokens(
        sequences=rows, shape=inputs.shape, mode=inputs.mode, prompt=inputs.prompt, seeds=[r.seed for r in runs],
        codebook_size=int(info["codebook_size"]), image_end_id=end_id,
        source_grids=grids[0], logprobs=logprobs,
        notes=[f"AR server: {info.get('model')!r} on {info.get('engine')}, {len(runs)} request(s)."])


def _source_grids(sources: list[list[int]], inputs: GlmImageInputs) -> list[torch.Tensor]:
    """The server's source-image ids -> one d32 [h, w] grid per source. The server sends them at d16 (2x2 each)
    or d32, one list per source or all of the prompt's sources in one list (split here by the known sizes)."""
    sizes = [h * w for h, w in inputs.source_grids]
    flat = torch.tensor([v for ids in sources for v in ids], dtype=torch.long)
    scale = 2 if flat.numel() == 4 * sum(sizes) else 1
    if flat.numel() != scale * scale * sum(sizes):
        raise GlmImageServerError(f"the AR server returned {flat.numel()} source-image ids for {len(sizes)} source "
                                  f"images of {sizes} tokens: is it an older glmimage_serve?")
    grids = []
    for part, (h, w) in zip(torch.split(flat, [scale * scale * n for n in sizes]), inputs.source_grids):
        grids.append(part.view(scale * h, scale * w)[::scale, ::scale].contiguous())
    return grids
