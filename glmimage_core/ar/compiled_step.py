"""AR steps that torch.compile can capture whole: GLM-Image's positions and embeddings looked up outside.

With a static KV cache, transformers compiles the model's forward for the
AR steps (one forward per sampled token). Two things in GLM-Image's forward stop that from being one graph:

- the 3D (mrope) position ids of an AR step are sliced out of a cached table
  at `past_key_values.get_seq_length() - prefill_len`, a host-side integer
  (a graph break and a device sync per token);
- inside ComfyUI the text embedding table stays in RAM (`HostEmbedding`), which a
  CUDA graph cannot read.

`graph_friendly_ar_steps` wraps the model's `prepare_inputs_for_generation` for
one `generate` call: after the prefill (which runs eagerly and fills the table),
each step's position ids are taken from the table with a Python integer known
before the call (the number of ids so far) and the step's embedding rows are
looked up there, so the compiled forward sees plain tensors. Without compiling,
the same wrapper gives the same tokens (tests/test_speed_memory.py).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch


class ARStepTimes:
    """When the first AR steps started: the first compiled call includes the compilation."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def compile_seconds(self) -> float | None:
        """(first step) - (second step): the extra time of the first call, i.e. compiling; None if too few steps."""
        if len(self.starts) < 3:
            return None
        first, second = self.starts[1] - self.starts[0], self.starts[2] - self.starts[1]
        return max(0.0, first - second)


@contextmanager
def graph_friendly_ar_steps(model: torch.nn.Module) -> Iterator[ARStepTimes]:
    inner = model.model
    original = model.prepare_inputs_for_generation
    times = ARStepTimes()

    def prepare(input_ids: torch.Tensor, *args, **kwargs):
        inputs = original(input_ids, *args, **kwargs)
        table = getattr(inner, "_cached_decode_position_ids", None)
        prefill = getattr(inner, "_prefill_len", None)
        if kwargs.get("is_first_iteration") or table is None or prefill is None or input_ids.shape[1] <= prefill:
            return inputs
        if len(times.starts) < 3:
            times.starts.append(time.perf_counter())
        step = input_ids.shape[1] - prefill - 1  # the token fed now is the (step+1)-th sampled one
        inputs["position_ids"] = table[:, :, step:step + 1].permute(1, 0, 2)
        ids = inputs.pop("input_ids", None)
        if ids is None:
            ids = input_ids[:, -1:]
        inputs["inputs_embeds"] = model.get_input_embeddings()(ids)
        return inputs

    model.prepare_inputs_for_generation = prepare
    try:
        yield times
    finally:
        del model.prepare_inputs_for_generation  # the class's own method again
