"""Sampling image tokens with the AR model (`GLMIMAGE_TOKENS`).

Plain `model.generate` with the model's own generation config, seeded the way
diffusers' `GlmImagePipeline.generate_prior_tokens` seeds it, so the same model,
prompt, shape and seed give the same tokens here and there. A stopping
criterion that never stops is the hook for the progress bar and the cancel
button: it runs once per sampled token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .ar_loading import ARModel
from .errors import GlmImageInputError
from .placement import ar_on_device
from .prompting import GlmImageInputs
from .runtime import Progress, check_interrupted, progress_bar
from .shapes import GridShape


@dataclass
class GeneratedTokens:
    """Raw sampled ids (prompt stripped) for N samples, plus what extraction needs."""

    sequences: torch.Tensor  # [N, generated_length] int64 on CPU
    shape: GridShape
    mode: str
    prompt: str
    seeds: list[int]
    codebook_size: int
    image_end_id: int
    source_grids: list[torch.Tensor] = field(default_factory=list)  # i2i: [h, w] d32 ids per source


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


class _PerTokenHook:
    """A `StoppingCriteria` that never stops: it advances the progress bar and honours cancel."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        check_interrupted()
        self.progress.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


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


def generate_tokens(ar: ARModel, inputs: GlmImageInputs, seed: int = 0,
                    sampling: SamplingSettings = SamplingSettings(),
                    progress: Progress | None = None, offload_after: bool = False) -> GeneratedTokens:
    """Sample the image tokens for `inputs` with one seed."""
    if seed < 0 or seed > 0xFFFF_FFFF_FFFF_FFFF:
        raise GlmImageInputError(f"seed {seed} is out of range: use 0 .. 2**64-1")
    max_new = inputs.shape.max_new_tokens(inputs.mode)
    progress = progress if progress is not None else progress_bar(max_new)
    with ar.lock, ar_on_device(ar, offload_after=offload_after) as device:
        model_inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in inputs.model_inputs.items()}
        with torch.no_grad():
            sources = _source_tokens(ar, inputs, model_inputs)
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                if device.type == "cuda":
                    torch.cuda.manual_seed(seed)
                out = ar.model.generate(
                    **model_inputs, max_new_tokens=max_new,
                    stopping_criteria=[_PerTokenHook(progress)], **sampling.generate_kwargs())
    return GeneratedTokens(
        sequences=out[:, inputs.input_length:].to("cpu"), shape=inputs.shape, mode=inputs.mode,
        prompt=inputs.prompt, seeds=[seed], codebook_size=ar.codebook_size, image_end_id=ar.image_end_id,
        source_grids=sources)
