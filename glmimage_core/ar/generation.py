"""Sampling image tokens with the AR model (`GLMIMAGE_TOKENS`).

Plain `model.generate` with the model's own generation config, seeded the way
diffusers' `GlmImagePipeline.generate_prior_tokens` seeds it, so the same model,
prompt, shape and seed give the same tokens here and there. A stopping
criterion that never stops is the hook for the cancel button (checked once per
sampled token), the progress bar and the live preview of the grid (both a few
times per second, whatever the token rate).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .seeded_batch import PerSampleSampler, derived_seeds, expand_inputs, sampling_warpers
from ..errors import GlmImageInputError
from ..memory import vram_plan
from .residency import ar_needs, ar_on_device, ar_residency
from .compiled_step import ARStepTimes, graph_friendly_ar_steps
from ..payloads import ARModel, GeneratedTokens, GlmImageInputs
from ..memory.host import Progress, check_interrupted, preview_size, progress_bar
from ..tokens.grid_preview import LiveGridPreview, model_palette


@dataclass(frozen=True)
class SamplingSettings:
    """0 for temperature/top_p/top_k means: keep the model's generation_config value."""

    do_sample: bool = True
    temperature: float = 0.0
    top_p: float = 0.0
    top_k: int = 0

    def generate_kwargs(self) -> dict:
        kwargs: dict = {"do_sample": self.do_sample}
        if self.do_sample:
            if self.temperature > 0:
                kwargs["temperature"] = self.temperature
            if self.top_p > 0:
                kwargs["top_p"] = self.top_p
            if self.top_k > 0:
                kwargs["top_k"] = self.top_k
        return kwargs


#: Seconds between two progress reports (each with a preview picture inside ComfyUI). ComfyUI
#: 0.3.75 sends every progress update over the websocket; a token a millisecond would be a
#: thousand messages (and JPEGs) a second.
REPORT_INTERVAL_S = 0.25


class _PerTokenHook:
    """A `StoppingCriteria` that never stops: cancel per token, progress and preview throttled.

    Every call (one per sampled token) checks ComfyUI's cancel button, so cancel stops
    between two tokens. Progress is reported on the first token, then at most every
    `REPORT_INTERVAL_S` seconds, and on the last one (`finish` reports what is left when the
    model ended early). A progress bar with `update_absolute` (ComfyUI's `ProgressBar`)
    also gets a JPEG of the first picture's grid as it fills, except on the first token;
    any other progress (the command line's, the tests') only gets `update(n)`, so
    nothing is rendered outside ComfyUI.
    """

    def __init__(self, progress: Progress, total: int, prompt_length: int,
                 preview: LiveGridPreview | None = None) -> None:
        self.progress, self.total, self.prompt_length = progress, total, prompt_length
        self.interval = REPORT_INTERVAL_S
        self.preview = preview if callable(getattr(progress, "update_absolute", None)) else None
        self.sampled = 0
        self.reported = 0
        self.last_report = 0.0
        self._ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        check_interrupted()
        self.sampled += 1
        self._ids = input_ids
        now = time.monotonic()
        if self.reported == 0 or self.sampled >= self.total or now - self.last_report >= self.interval:
            self._report(now, with_preview=self.reported > 0)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        """Report the last tokens when generation ended before `total` (end-of-image sampled early)."""
        if self.sampled > self.reported:
            self._report(time.monotonic(), with_preview=True)

    def _report(self, now: float, with_preview: bool) -> None:
        if self.preview is not None and with_preview and self._ids is not None:
            image = self.preview.render(self._ids[0, self.prompt_length:])
            self.progress.update_absolute(self.sampled, self.total, ("JPEG", image, max(image.size)))
        else:
            self.progress.update(self.sampled - self.reported)
        self.reported = self.sampled
        self.last_report = now


def _source_tokens(ar: ARModel, inputs: GlmImageInputs, model_inputs: dict) -> list[torch.Tensor]:
    """d32 token grids of the source images, one image at a time.

    (diffusers' own path concatenates `pooler_output`, which transformers now
    returns as a per-image list, and crashes; going through `get_image_tokens`
    per image is what the model itself does when it reads the sources.)
    """
    if not inputs.sources:
        return []
    n = len(inputs.sources)
    grids = model_inputs["image_grid_thw"][:n]
    features = ar.model.get_image_features(model_inputs["pixel_values"], grids).pooler_output
    tokens = []
    for feature, (h, w) in zip(features, inputs.source_grids):
        ids = ar.model.get_image_tokens([feature])
        tokens.append(ids.view(h, w).to("cpu", torch.long))
    return tokens


SPEEDS = ["standard", "compiled"]
MAX_IMAGES = 16


def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def speed_kwargs(speed: str, device: torch.device, compile_config=None) -> tuple[dict, str | None]:
    """generate() options for a speed choice, and a note when the choice cannot apply here.

    compiled = a static KV cache sized from the shape + torch.compile of the AR step
    (mode reduce-overhead: CUDA graphs). transformers keeps the compiled step on the model and
    reuses it while the cache size (prompt + shape) stays the same. "static" (static cache,
    no compile) exists for tests: it is the compiled path minus the compiler. A given
    `compile_config` (transformers' CompileConfig) replaces the CUDA default and compiles on
    any device (tests and benchmarks use it, e.g. fullgraph on the CPU).
    """
    if speed == "standard":
        return {}, None
    if speed == "static":
        return {"cache_implementation": "static", "disable_compile": True}, None
    if speed != "compiled":
        raise GlmImageInputError(f"speed {speed!r} is not one of {SPEEDS}")
    if compile_config is not None:
        compile_config._compile_all_devices = True
        return {"cache_implementation": "static", "compile_config": compile_config}, None
    if device.type != "cuda":
        return {}, (f"speed=compiled needs a CUDA GPU (torch.compile with CUDA graphs); on {device.type} it "
                    "does not pay off, so this run used speed=standard")
    if not _has_triton():
        return {}, ("speed=compiled needs Triton for torch.compile on CUDA (pip install triton; on Windows "
                    "triton-windows), so this run used speed=standard")
    from transformers import CompileConfig

    return {"cache_implementation": "static",
            "compile_config": CompileConfig(fullgraph=False, dynamic=False, mode="reduce-overhead")}, None


def _compile_note(ar: ARModel, shape: torch.Size, times: ARStepTimes) -> str:
    """speed=compiled: whether this (batch, length) compiled now (and for how long) or reused a compiled step."""
    key = (int(shape[0]), int(shape[1]))
    if key in ar.compiled_shapes:
        return f"speed=compiled: reused the compiled step for {key[0]} x {key[1]} tokens (no compiling)."
    ar.compiled_shapes.add(key)
    seconds = times.compile_seconds()
    spent = f"~{seconds:.1f} s" if seconds is not None else "some time"
    return (f"speed=compiled: first run at {key[0]} x {key[1]} tokens spent {spent} compiling; later runs of "
            "this shape reuse it.")


def generate_tokens(ar: ARModel, inputs: GlmImageInputs, seed: int = 0,
                    sampling: SamplingSettings = SamplingSettings(),
                    progress: Progress | None = None, offload_after: bool = False,
                    images: int = 1, speed: str = "standard", allow_streaming: bool = False,
                    vram_limit: int | None = None, compile_config=None) -> GeneratedTokens:
    """Sample the image tokens for `inputs`: `images` pictures with seeds seed, seed+1, ...

    One picture runs plain `generate` after `torch.manual_seed(seed)`, exactly like
    diffusers' `generate_prior_tokens`; several run as one batch whose row i equals
    that single run with seed+i. Inside ComfyUI the model must fit in VRAM unless
    `allow_streaming`; `vram_limit` (bytes) keeps at most that much of it resident
    and streams the rest (for measurements: streaming the AR model is slow).
    """
    if seed < 0 or seed > 0xFFFF_FFFF_FFFF_FFFF:
        raise GlmImageInputError(f"seed {seed} is out of range: use 0 .. 2**64-1")
    if not 1 <= images <= MAX_IMAGES:
        raise GlmImageInputError(f"images={images}: choose 1 .. {MAX_IMAGES} pictures per run")
    seeds = derived_seeds(seed, images)
    max_new = inputs.shape.max_new_tokens(inputs.mode)
    progress = progress if progress is not None else progress_bar(max_new)
    notes: list[str] = []
    residency = ar_residency(ar, inputs, images, allow_streaming or vram_limit is not None)
    residency.max_resident = vram_limit
    if ar.device.type != "cpu" and ar.inventory is not None:
        chosen, _ = ar_needs(ar, residency.memory_required)
        notes.append(f"VRAM for this run: ~{vram_plan.gb(chosen.total)} ({vram_plan.gb(chosen.weights)} "
                     f"{chosen.label} weights + {vram_plan.gb(chosen.working)} KV cache and activations).")
    with ar.lock, ar_on_device(ar, offload_after=offload_after, residency=residency, notes=notes) as device:
        palette = model_palette(ar.model, ar.codebook_size)
        hook = _PerTokenHook(progress, max_new, inputs.input_length,
                             LiveGridPreview(inputs.shape, inputs.mode, ar.codebook_size, palette,
                                             max_px=preview_size()))
        extra, note = speed_kwargs(speed, device, compile_config)
        model_inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in inputs.model_inputs.items()}
        kwargs = sampling.generate_kwargs()
        if images > 1 and sampling.do_sample:
            # The config generate() itself would sample with: the model's settings, the overrides,
            # and transformers' global defaults for anything unset (e.g. top_k=50).
            config, _ = ar.model._prepare_generation_config(None, **kwargs)
            kwargs = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                      "logits_processor": [PerSampleSampler(sampling_warpers(config), seeds, device)]}
        with torch.no_grad():
            sources = _source_tokens(ar, inputs, model_inputs)  # from the one unbatched copy of the sources
            if images > 1:
                model_inputs = expand_inputs(model_inputs, images)
            devices = [device] if device.type == "cuda" else []
            static = extra.get("cache_implementation") == "static"
            with torch.random.fork_rng(devices=devices), \
                    (graph_friendly_ar_steps(ar.model) if static else nullcontext()) as step_times:
                torch.manual_seed(seed)
                if device.type == "cuda":
                    torch.cuda.manual_seed(seed)
                out = ar.model.generate(
                    **model_inputs, max_new_tokens=max_new,
                    stopping_criteria=[hook], **kwargs, **extra)
            hook.finish()
        if "compile_config" in extra:
            notes.append(_compile_note(ar, out.shape, step_times))
    return GeneratedTokens(
        sequences=out[:, inputs.input_length:].to("cpu"), shape=inputs.shape, mode=inputs.mode,
        prompt=inputs.prompt, seeds=seeds, codebook_size=ar.codebook_size, image_end_id=ar.image_end_id,
        source_grids=sources, notes=notes + ([note] if note else []), palette=palette)
