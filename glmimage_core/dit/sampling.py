"""The engine's DiT sampler: GLM-Image tokens (`PriorTokens`) -> pixels, without ComfyUI.

GLM-Image's DiT is sampled in two places: the "GLM-Image decode" node runs
ComfyUI's own sampler on the native MODEL (glmimage_comfy/decoder_sampling.py),
and this loop serves the command line, plain Python, the benchmarks and the
tests. Every GLM-specific step is a named primitive in this package that both
call, in the style of a diffusers pipeline's step functions:

==========================  ===================================================
step                        primitive (module)
==========================  ===================================================
inputs checked              `validate` (decoder_inputs)
glyph embeddings            `encode_glyphs` (glyphs)
guidance rows               `Branch`, `GUIDED` / `UNGUIDED`, `rows_for`, `combine` (guidance)
schedule                    `glm_shift`, `glm_schedule`, `dit_timestep`, `euler_step` (schedule)
source images (i2i)         `encode_sources` / `vae_encode`, `source_kv` (latents)
DiT forward                 `velocity` (forward)
VRAM fit                    `rows_fit`, `step_bytes`, `vae_decode_must_tile` (fit)
latent normalisation        `LatentStats.normalise` / `denormalise` (payloads)
VAE decode and tiling       `decode_latents` / `vae_decode` (latents)
==========================  ===================================================

Why two loops over shared steps rather than one loop: inside ComfyUI the
sampler must be ComfyUI's (KSampler's samplers, schedulers, LoRA and model
patches, previews, its memory manager), and outside ComfyUI there is no such
sampler to call. Dropping this loop for diffusers' `GlmImagePipeline` would lose
what the pack adds to it (one batched forward for both guidance branches with
per-row source reads, inputs checked with messages that name them, noise that
gives the same picture on CPU, CUDA and MPS, the VRAM fit, progress and
cancel). So the loop stays, thin: what is left here is the iteration itself,
some 40 lines, and what would be upstreamed into ComfyUI is the primitives
(the model-specific parts that ComfyUI keeps in model_base / latent_formats /
model_sampling), not a second sampler. The pixels equal diffusers'
`GlmImagePipeline(..., prior_token_ids=prior.d16(), generator=torch.Generator().manual_seed(seed))`
(tests/test_decoding.py) and ComfyUI's path (tests/test_native.py).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import GlmImageInputError
from ..memory.host import Progress, host
from ..memory.placement import ensure_on_device
from ..payloads import DecoderBundle, DiTModel, PriorTokens, d16_ids
from .decoder_inputs import DecodeInputs, validate
from .fit import rows_fit
from .forward import velocity
from .glyphs import MAX_GLYPH_BYTES, encode_glyphs, get_glyph_texts
from .guidance import branches_for, combine, rows_for
from .latents import decode_latents, encode_sources, prepare_latents, source_kv
from .schedule import calculate_shift, euler_step, glm_schedule, glm_shift, glm_timesteps, image_seq_len, shift_for

GUIDANCE_BATCHING = ("auto", "batched", "sequential")


def decode_prior(bundle: DecoderBundle, prior: PriorTokens, prompt: str | None = None, steps: int = 50,
                 guidance: float = 1.5, seed: int = 0,
                 source_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 progress: Progress | None = None, guidance_batching: str = "auto") -> torch.Tensor:
    """Render GLM-Image tokens: [N, H, W, 3] float32 pixels in 0..1 on the CPU (ComfyUI's IMAGE).

    `prompt` (default: the tokens' own prompt) only feeds the glyph encoder,
    i.e. its quoted text. `guidance` > 1 runs classifier-free guidance against
    empty glyphs and dropped prior tokens, as diffusers does; `guidance_batching`
    runs both branches in one forward ("batched"), one after the other
    ("sequential"), or batched when free memory allows ("auto"). For
    image-to-image tokens, `source_images` are the pictures the tokens were
    made from, in the same order.
    """
    if guidance_batching not in GUIDANCE_BATCHING:
        raise GlmImageInputError(f"guidance_batching {guidance_batching!r} is not one of {list(GUIDANCE_BATCHING)}")
    inputs = validate(bundle, prior, prompt, steps, guidance, source_images)
    progress = progress if progress is not None else host().progress_bar(inputs.steps)
    with bundle.lock, torch.inference_mode():
        return _decode(bundle, inputs, seed, progress, guidance_batching)


def batch_guidance(dit: DiTModel, height: int, width: int, pictures: int, choice: str = "auto",
                   extra_bytes: int = 0) -> bool:
    """Both guidance branches in one forward, unless asked otherwise or free VRAM is short for twice the rows."""
    if choice != "auto":
        return choice == "batched"
    return rows_fit(dit, height, width, 2 * pictures, host().free_memory(dit.device, dit.transformer), extra_bytes)


def _decode(bundle: DecoderBundle, inputs: DecodeInputs, seed: int, progress, guidance_batching: str) -> torch.Tensor:
    dit = bundle.dit
    device, dtype, scale = dit.device, dit.dtype, dit.vae_scale_factor
    batch = inputs.grids.shape[0]
    branches = branches_for(inputs.guidance)

    # 1. Glyph embeddings per branch, source images -> raw VAE latents (image-to-image), then noise.
    glyphs = [(b, encode_glyphs(bundle.glyph, b.glyph_prompt(inputs.prompt), device, dtype)) for b in branches]
    sources = encode_sources(bundle.vae_model, inputs.sources, inputs.source_grids) if inputs.sources else []
    latents = prepare_latents(dit, batch, inputs.height, inputs.width, seed, device, dtype)

    # 2. The DiT: the sources' keys/values once, the schedule, the rows of each forward.
    ensure_on_device(dit.transformer, device)
    transformer = dit.transformer
    kv = source_kv(transformer, sources, [d16_ids(g) for g in inputs.source_grids], dit.latent_stats, scale,
                   device, dtype) if sources else None
    schedule = glm_schedule(inputs.steps, glm_shift(dit, inputs.height, inputs.width), device)
    prior_ids = d16_ids(inputs.grids).to(device)
    together = len(branches) > 1 and batch_guidance(dit, inputs.height, inputs.width, batch, guidance_batching,
                                                    kv.nbytes if kv is not None else 0)
    forwards = [glyphs] if together else [[part] for part in glyphs]
    rows = [rows_for(parts, prior_ids, kv is not None) for parts in forwards]
    rotary = tuple(t.to(device) for t in transformer.rope(latents))  # same for every step: compute once

    # 3. Denoise: each forward's velocities, guidance, one Euler step.
    for i, timestep in enumerate(schedule.timesteps):
        host().check_interrupted()
        latent_input = latents.to(dtype)
        predictions = []
        for parts, row in zip(forwards, rows):
            n = len(parts)
            x = latent_input if n == 1 else latent_input.repeat(n, 1, 1, 1)
            out = velocity(transformer, x, timestep.expand(batch * n), pixel_scale=scale, source_kv=kv,
                           rotary=rotary, **row).float()
            predictions.extend(out.chunk(n))
        latents = euler_step(latents, combine(predictions, inputs.guidance), schedule.sigmas[i],
                             schedule.sigmas[i + 1])
        progress.update(1)

    # 4. Latents -> pixels, one picture at a time to bound the VAE's peak memory.
    return decode_latents(bundle.vae_model, latents)


__all__ = ["decode_prior", "batch_guidance", "GUIDANCE_BATCHING",
           # the primitives, as this module exported them before they had modules of their own
           "MAX_GLYPH_BYTES", "get_glyph_texts", "encode_glyphs", "calculate_shift", "glm_timesteps", "shift_for",
           "image_seq_len", "prepare_latents", "encode_sources", "decode_latents"]
