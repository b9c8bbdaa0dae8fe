"""The decoder's inputs, checked before anything runs: tokens, prompt, steps, guidance, source images.

Everything that would fail deep inside the DiT or silently give garbage is
checked up front (both height and width, id ranges, codebook sizes, source
image count), with messages that name the input; the decode loop
(dit_sampling) and the native conditioning node (glmimage_comfy) both start
from `validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import GlmImageInputError
from ..images import split_batch
from ..payloads import DecoderBundle, DiTModel, PriorTokens
from ..shapes import PIXELS_PER_TOKEN

MAX_STEPS = 1000


def source_image_list(source_images: torch.Tensor | Sequence[torch.Tensor] | None) -> list[torch.Tensor]:
    """Flatten ComfyUI IMAGE tensors ([B,H,W,C] or [H,W,C]) into a list of [H,W,C] images."""
    if source_images is None:
        return []
    if isinstance(source_images, torch.Tensor):
        source_images = [source_images]
    images: list[torch.Tensor] = []
    for index, item in enumerate(source_images):
        images += split_batch(item, f"source image {index + 1}")
    return images


@dataclass(frozen=True)
class DecodeInputs:
    """Checked inputs: what the loop needs, derived once."""

    prompt: str
    grids: torch.Tensor  # [N, H, W] int64 (CPU)
    height: int
    width: int
    steps: int
    guidance: float
    sources: list[torch.Tensor]  # [H, W, C] float per source grid
    source_grids: list[torch.Tensor]


def validate(bundle: DecoderBundle | DiTModel, prior: PriorTokens, prompt: str | None, steps: int, guidance: float,
             source_images) -> DecodeInputs:
    """Everything that would fail deep inside the DiT or silently give garbage, checked up front."""
    if not isinstance(prior, PriorTokens):
        raise GlmImageInputError(f"prior must be GLM-Image tokens (PriorTokens), got {type(prior).__name__}")
    prompt = prior.prompt if prompt is None else prompt
    if not isinstance(prompt, str):
        raise GlmImageInputError(f"prompt must be text, got {type(prompt).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise GlmImageInputError(f"steps is {steps!r}; it must be a whole number from 1 to {MAX_STEPS} (50 is usual)")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        raise GlmImageInputError(f"guidance is {guidance!r}; it must be a number >= 0 (1.5 is usual, "
                                 "<= 1 turns classifier-free guidance off)")
    grids = _check_grids(prior.grids, "prior tokens' grids", batch=True)
    _check_codebook(bundle, prior)
    _check_ids(grids, bundle.codebook_size, "prior tokens")
    height, width = PIXELS_PER_TOKEN * grids.shape[-2], PIXELS_PER_TOKEN * grids.shape[-1]
    check_size(bundle, height, width, "prior tokens")

    if prior.mode not in ("t2i", "i2i"):
        raise GlmImageInputError(f"prior tokens' mode is {prior.mode!r}; expected 't2i' or 'i2i'")
    images = source_image_list(source_images)
    source_grids: list[torch.Tensor] = []
    if prior.mode == "t2i":
        if images:
            raise GlmImageInputError(f"{len(images)} source image(s) given but the prior tokens are text-to-image; "
                                     "disconnect the source images or make image-to-image tokens")
    else:
        source_grids = [_check_grids(g, f"source grid {i + 1}", batch=False) for i, g in enumerate(prior.source_grids)]
        if not source_grids:
            raise GlmImageInputError("the prior tokens are image-to-image but hold no source grids; "
                                     "make the tokens again from the source images")
        if len(images) != len(source_grids):
            raise GlmImageInputError(
                f"source images: {len(images)} given, but the prior tokens were made from {len(source_grids)} "
                "source image(s); connect the same images (in the same order) that made the tokens")
        for index, (image, grid) in enumerate(zip(images, source_grids)):
            _check_ids(grid, bundle.codebook_size, f"source grid {index + 1}")
            check_size(bundle, PIXELS_PER_TOKEN * grid.shape[0], PIXELS_PER_TOKEN * grid.shape[1],
                       f"source grid {index + 1}")
            _check_image(image, index)
    return DecodeInputs(prompt=prompt, grids=grids, height=height, width=width, steps=int(steps),
                        guidance=float(guidance), sources=images, source_grids=source_grids)


def _check_grids(grids, what: str, batch: bool) -> torch.Tensor:
    dims = 3 if batch else 2
    layout = "[N, token_h, token_w]" if batch else "[token_h, token_w]"
    if not isinstance(grids, torch.Tensor) or grids.dim() != dims:
        shape = tuple(grids.shape) if isinstance(grids, torch.Tensor) else type(grids).__name__
        raise GlmImageInputError(f"{what} have shape {shape}; expected {layout} ids")
    if grids.dtype.is_floating_point or grids.dtype == torch.bool or grids.is_complex():
        raise GlmImageInputError(f"{what} are {grids.dtype}; expected integer codebook ids")
    if grids.numel() == 0:
        raise GlmImageInputError(f"{what} are empty (shape {tuple(grids.shape)}); nothing to decode")
    return grids.detach().to("cpu", torch.long)


def _check_codebook(bundle: DecoderBundle | DiTModel, prior: PriorTokens) -> None:
    if int(prior.codebook_size) != bundle.codebook_size:
        raise GlmImageInputError(
            f"the prior tokens come from a codebook of {prior.codebook_size} ids but the decoder "
            f"{bundle.path!r} knows {bundle.codebook_size} (its DiT's prior_vq_quantizer_codebook_size); "
            "use the AR model and the decoder of the same GLM-Image release")


def _check_ids(ids: torch.Tensor, codebook: int, what: str) -> None:
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= codebook:
        bad = low if low < 0 else high
        raise GlmImageInputError(f"{what} hold id {bad}, outside the decoder's codebook 0..{codebook - 1}: "
                                 "the AR stage sampled a special token inside the grid, or the tokens were "
                                 "edited; make them again")


def check_size(bundle: DecoderBundle | DiTModel, height: int, width: int, what: str) -> None:
    """One d16 prior id per DiT patch: the DiT's patch must cover 16 px and both sides divide by 32.

    diffusers only checks the width against 4; a width that is not a multiple
    of 32 would misalign prior ids and latent patches without an error.
    """
    per_patch = bundle.vae_scale_factor * bundle.patch_size
    if per_patch != 16:
        raise GlmImageInputError(
            f"decoder {bundle.path!r} covers {per_patch} px per DiT patch (VAE scale {bundle.vae_scale_factor} x "
            f"patch {bundle.patch_size}); GLM-Image tokens need 16, so {what} cannot be decoded with it")
    multiple = per_patch * 2
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise GlmImageInputError(f"{what} make a {width}x{height} px picture; both sides must be positive "
                                 f"multiples of {multiple}")


def _check_image(image: torch.Tensor, index: int) -> None:
    h, w, c = image.shape
    if h == 0 or w == 0 or c == 0:
        raise GlmImageInputError(f"source image {index + 1} is empty ({w}x{h} px, {c} channels)")
    if c not in (1, 3, 4):
        raise GlmImageInputError(f"source image {index + 1} has {c} channels; expected 1, 3 or 4 (IMAGE is "
                                 "[batch, height, width, channels])")
    if not image.dtype.is_floating_point:
        raise GlmImageInputError(f"source image {index + 1} is {image.dtype}; expected float pixels in 0..1")
