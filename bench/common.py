"""What the benchmarks share: the machine, timing with peak VRAM, and models at GLM-Image's real sizes.

Real-size models are built in place with random weights (glmimage_core.demo.real_size):
nothing is downloaded, and on a GPU they are built directly on it.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def quiet_libraries() -> None:
    from diffusers.utils import logging as df_logging
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    df_logging.disable_progress_bar()
    df_logging.set_verbosity_error()


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    total = torch.cuda.get_device_properties(0).total_memory if gpu else None
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "gpu": gpu,
            "gpu_memory_bytes": total}


@dataclass
class Measured:
    seconds: float
    peak_vram: int | None  # bytes allocated at the peak (CUDA), None elsewhere
    value: object = None


def timed(fn: Callable[[], object], device: torch.device) -> Measured:
    """Wall time of `fn()` (synchronised on CUDA) and its peak allocated VRAM."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    value = fn()
    if cuda:
        torch.cuda.synchronize()
    return Measured(time.perf_counter() - start, torch.cuda.max_memory_allocated() if cuda else None, value)


@dataclass
class StepClock:
    """A progress object (update per step) that keeps the time of each step, for seconds per step."""

    total: int = 0
    stamps: list[float] = field(default_factory=list)

    def update(self, n: int = 1) -> None:
        self.stamps.append(time.perf_counter())

    def seconds_per_step(self) -> float | None:
        diffs = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(diffs) if diffs else None


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def raw_generate(ar, prompt: str, shape, seed: int) -> int:
    """The upstream way to sample a picture's tokens: chat template with the target size, manual_seed, generate.

    What the pack's node path is measured against (bench_ar.py, bench_gpu.py); returns the tokens sampled."""
    messages = [[{"role": "user", "content": [{"type": "text", "text": prompt}]}]]
    inputs = ar.processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                              processor_kwargs={"target_h": shape.height, "target_w": shape.width})
    inputs = inputs.to(ar.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = ar.model.generate(**inputs, max_new_tokens=shape.max_new_tokens("t2i"), do_sample=True)
    return int(out.shape[1] - inputs["input_ids"].shape[1])
