"""Putting the AR model on its device for a run, and optionally off it afterwards.

The AR model runs one forward per sampled token, so it must be resident: a
streamed layer would be copied from RAM thousands of times per picture. Before
a run the VRAM it needs (weights + KV cache + activations for this shape) is
compared with what ComfyUI can free; if it does not fit, the run stops with a
message naming the option that would fit, unless the user allowed streaming.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..memory import vram_plan
from ..memory.comfy_memory import Residency, ensure_on_device, is_streaming, release
from ..payloads import ARModel, GlmImageInputs

STREAMING_HINT = "turn on allow_streaming in 'GLM-Image generate tokens' (it works, but every token then copies " \
                 "the streamed layers from RAM: 10-50x slower)"


def ar_working_bytes(ar: ARModel, inputs: GlmImageInputs, images: int) -> int:
    """KV cache + activations of one run of `inputs` with `images` pictures (vram_plan.ar_run_bytes)."""
    config = ar.model.config
    patches = sum(4 * s.grid[0] * s.grid[1] for s in inputs.sources)  # 16 px patches: 4 per 32 px token
    return vram_plan.ar_run_bytes(config.text_config, config.vision_config, inputs.input_length,
                                  inputs.shape.max_new_tokens(inputs.mode), images, patches,
                                  act_bytes=ar.dtype.itemsize)


def ar_needs(ar: ARModel, working: int) -> tuple[vram_plan.Need, list[vram_plan.Need]]:
    """What the loaded option needs for a run, and what every option would need."""
    host_on_device = not ar.embeddings_on_host
    needs = vram_plan.weight_needs(ar.inventory, vram_plan.AR_OPTIONS, ar.dtype, working, host_on_device)
    chosen = vram_plan.WeightOption(ar.weight_dtype, ar.quantization)
    return next(n for n in needs if n.option == chosen), needs


def ar_residency(ar: ARModel, inputs: GlmImageInputs, images: int, allow_streaming: bool) -> Residency:
    working = ar_working_bytes(ar, inputs, images)
    chosen, needs = ar_needs(ar, working)
    shape = inputs.shape.describe() + (f", {images} pictures" if images > 1 else "")

    def message(free: int) -> str:
        return vram_plan.plan_message("the AR model", chosen, free, needs, shape, STREAMING_HINT)

    largest = vram_plan.largest_layer_bytes(ar.model)
    return Residency(memory_required=working, must_fit=not allow_streaming, message=message, pinned=ar.pinned,
                     streaming_message=lambda free: vram_plan.streaming_message("the AR model", largest, working,
                                                                                free, shape))


@contextmanager
def ar_on_device(ar: ARModel, offload_after: bool = False, residency: Residency | None = None,
                 notes: list[str] | None = None) -> Iterator[torch.device]:
    if ar.quantization != "none":  # bitsandbytes weights live where they were loaded
        yield ar.device
        return
    ensure_on_device(ar, ar.model, ar.device, residency)
    if notes is not None and is_streaming(ar):
        notes.append("The AR model did not fit in free VRAM and streams its layers from RAM on every token "
                     "(slow): weight_dtype fp8_e4m3fn or quantization nf4 in the loader would keep it on the GPU.")
    try:
        yield ar.device
    finally:
        if offload_after:
            release(ar, ar.model, ar.device)
