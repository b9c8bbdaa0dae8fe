"""Sampling N pictures in one batched `generate`, each with its own seed.

Plain `generate` draws every row from one global RNG, so row i of a batch
would not match a single run with seed i. Here the last logits processor does
the sampling itself: it applies the same warpers `generate` would (temperature,
top-k, top-p, ... from the merged generation config, in generate's order),
draws row i with its own `torch.Generator` seeded with seed i, and hands
`generate` (running greedy) scores that allow only the drawn id. A fresh
generator seeded s draws what the global RNG draws after `torch.manual_seed(s)`,
so every row equals the single run with its seed.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor
from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper, TypicalLogitsWarper)


def derived_seeds(seed: int, count: int) -> list[int]:
    """Seeds of a batch: seed, seed+1, ... (so picture i can be redone alone with seed+i)."""
    return [(seed + i) % (1 << 64) for i in range(count)]


def sampling_warpers(config: GenerationConfig) -> list[LogitsProcessor]:
    """The warpers `generate` adds for do_sample=True, in the same order (batch of one beam)."""
    warpers: list[LogitsProcessor] = []
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
    if config.typical_p is not None and config.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(mass=config.typical_p, min_tokens_to_keep=1))
    return warpers


class PerSampleSampler(LogitsProcessor):
    def __init__(self, warpers: list[LogitsProcessor], seeds: list[int], device: torch.device) -> None:
        self.warpers = warpers
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        picks = torch.stack([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)])
        only_pick = torch.full_like(scores, float("-inf"))
        return only_pick.scatter_(1, picks, 0.0)


def expand_inputs(model_inputs: dict, count: int) -> dict:
    """One prompt's inputs repeated as `count` identical samples, as the processor would batch them."""
    expanded = {}
    for key, value in model_inputs.items():
        if not isinstance(value, torch.Tensor):
            expanded[key] = value
        elif key in ("input_ids", "attention_mask", "images_per_sample"):
            expanded[key] = value.repeat(count, *([1] * (value.dim() - 1)))
        else:  # pixel_values, image_grid_thw: per-sample blocks, concatenated
            expanded[key] = torch.cat([value] * count, dim=0)
    return expanded
