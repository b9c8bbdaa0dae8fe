"""The diffusion decoder: GLM-Image tokens (`PriorTokens`) -> pixels.

A port of diffusers' `GlmImagePipeline.__call__` from the point where prior
tokens exist, split into the same steps (glyph texts, glyph embeddings,
latents, timesteps, source-image KV cache, denoising loop, VAE decode) so the
two can be read side by side. Same components, tokens and seed give the same
pixels as `GlmImagePipeline(..., prior_token_ids=prior.d16(),
generator=torch.Generator().manual_seed(seed))` (tests/test_decoding.py checks
it). What differs from diffusers, on purpose:

- inputs are validated first (decode_inputs: both height and width, id ranges, codebook
  sizes, source image count) with messages that name the input;
- source images are resized here, once, to exactly 32 px per source token, so
  VAE latents and prior ids line up whatever size the user's image has;
- the initial noise always comes from a CPU generator (as with diffusers'
  `torch.Generator()`), so a seed gives the same picture on CPU, CUDA or MPS;
- the scheduler is a fresh copy per call and the VAE decodes one image at a
  time (lower peak memory at 2048 px, same pixels), tiled when a whole picture
  would not fit in free VRAM;
- the guided and the unguided branch run in one batched DiT forward when memory
  allows (`dit_forward`: per-row glyph padding, prior dropping and source-image
  reads), instead of one forward each;
- progress and cancel go through ComfyUI when it is there.

Inside ComfyUI the "GLM-Image decode" node runs the same DiT forward through
ComfyUI's own sampler (glmimage_comfy); this loop is the one the command line
and plain Python use.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from ..memory import host as runtime, vram_plan
from .decoder_inputs import DecodeInputs, validate
from .forward import build_source_kv, pad_glyphs, velocity
from ..errors import GlmImageInputError
from ..images import source_pixels
from ..memory.comfy_memory import ensure_on_device, patcher_of
from ..payloads import DecoderBundle, DiTModel, GlyphEncoder, PriorTokens, VAEModel, d16_ids

#: ByT5 truncates each glyph text to this many bytes (diffusers' `max_sequence_length`).
MAX_GLYPH_BYTES = 2048


# --------------------------------------------------------------------------- glyphs


def get_glyph_texts(prompt: str) -> list[str]:
    """The text the picture should show: everything in '...', “...”, "..." or corner brackets
    (U+300C ... U+300D).

    Same order and patterns as diffusers (single quotes first), because the
    glyph encoder sees the texts concatenated in that order.
    """
    return (
        re.findall(r"'([^']*)'", prompt)
        + re.findall(r"\u201c([^\u201c\u201d]*)\u201d", prompt)
        + re.findall(r'"([^"]*)"', prompt)
        + re.findall(r"\u300c([^\u300c\u300d]*)\u300d", prompt)
    )


def encode_glyphs(glyph: GlyphEncoder, prompt: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, L, D] glyph embeddings: all glyph texts' byte embeddings, concatenated.

    No glyph text encodes "" (just the EOS byte), which is also what the
    unconditional branch uses. Puts the encoder on its device first.
    """
    ensure_on_device(glyph, glyph.text_encoder, glyph.device)
    texts = get_glyph_texts(prompt) or [""]
    pad = glyph.tokenizer.pad_token_id
    input_ids = glyph.tokenizer(texts, max_length=MAX_GLYPH_BYTES, truncation=True).input_ids
    # diffusers prepends one pad to every text when the number of texts is even; the weights were
    # tuned through that code, so keep it.
    input_ids = [[pad] * ((len(input_ids) + 1) % 2) + ids for ids in input_ids]
    longest = max(len(ids) for ids in input_ids)
    mask = torch.tensor([[1] * len(ids) + [0] * (longest - len(ids)) for ids in input_ids], device=glyph.device)
    ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in input_ids], device=glyph.device)
    hidden = glyph.text_encoder(ids, attention_mask=mask).last_hidden_state
    return hidden[mask.bool()].unsqueeze(0).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- schedule


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, base_shift: float = 0.25,
                    max_shift: float = 0.75) -> float:
    """mu for the resolution dependent time shift: bigger pictures spend more steps at high noise."""
    return (image_seq_len / base_seq_len) ** 0.5 * max_shift + base_shift


def glm_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """GLM-Image's timesteps: linspace(1000, 1, steps + 1) without the last, truncated to whole numbers."""
    timesteps = np.linspace(num_train_timesteps, 1.0, steps + 1)[:-1]
    return timesteps.astype(np.int64).astype(np.float32)


def shift_for(scheduler_config, seq_len: int) -> float:
    """mu of the resolution dependent shift, from a scheduler config (a dict or diffusers' config)."""
    return calculate_shift(seq_len, scheduler_config.get("base_image_seq_len", 256),
                           scheduler_config.get("base_shift", 0.25), scheduler_config.get("max_shift", 0.75))


def image_seq_len(dit: DiTModel | DecoderBundle, height: int, width: int) -> int:
    """DiT patches of a picture: what the shift is computed from."""
    scale = dit.vae_scale_factor
    return (height // scale) * (width // scale) // dit.patch_size**2


def make_scheduler(bundle: DecoderBundle, steps: int, seq_len: int, device: torch.device):
    """A fresh scheduler set up for `steps`, and its timesteps.

    The DiT is fed the *unshifted* integer timesteps (minus one, see the
    loop) while the Euler step uses the *shifted* sigmas: passing both
    `timesteps` and `sigmas` to `set_timesteps` gives exactly that split.
    A copy keeps the bundle's scheduler free of per-call state.
    """
    scheduler = type(bundle.scheduler).from_config(bundle.scheduler.config)
    config = scheduler.config
    timesteps = glm_timesteps(steps, config.num_train_timesteps)
    sigmas = timesteps / config.num_train_timesteps
    scheduler.set_timesteps(timesteps=timesteps, sigmas=sigmas, device=device, mu=shift_for(config, seq_len))
    return scheduler, scheduler.timesteps


# --------------------------------------------------------------------------- latents


def prepare_latents(dit: DiTModel, batch: int, height: int, width: int, seed: int,
                    device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Initial noise, drawn on the CPU from `seed` (as diffusers does with a CPU generator), then moved."""
    from diffusers.utils.torch_utils import randn_tensor

    scale = dit.vae_scale_factor
    shape = (batch, dit.latent_channels, height // scale, width // scale)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


# --------------------------------------------------------------------------- source images


def encode_sources(vae_model: VAEModel, images: list[torch.Tensor], grids: list[torch.Tensor],
                   dtype: torch.dtype) -> list[torch.Tensor]:
    """Each source image, resized to 32 px per source token, through the VAE: model-space [1,C,h,w] latents."""
    ensure_on_device(vae_model, vae_model.vae, vae_model.device)
    latents = []
    for image, grid in zip(images, grids):
        pixels = source_pixels(image, grid).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0
        pixels = pixels.to(device=vae_model.device, dtype=vae_model.dtype)
        raw = vae_model.vae.encode(pixels).latent_dist.mode().to(dtype)
        latents.append(vae_model.latent_stats.normalise(raw))
    return latents


# --------------------------------------------------------------------------- main entry


GUIDANCE_BATCHING = ("auto", "batched", "sequential")


def decode_prior(bundle: DecoderBundle, prior: PriorTokens, prompt: str | None = None, steps: int = 50,
                 guidance: float = 1.5, seed: int = 0,
                 source_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 progress: runtime.Progress | None = None, guidance_batching: str = "auto") -> torch.Tensor:
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
    progress = progress if progress is not None else runtime.progress_bar(inputs.steps)
    with bundle.lock, torch.inference_mode():
        return _decode(bundle, inputs, seed, progress, guidance_batching)


def batch_guidance(dit: DiTModel, height: int, width: int, pictures: int, choice: str = "auto",
                   extra_bytes: int = 0) -> bool:
    """Both guidance branches in one forward, unless asked otherwise or free VRAM is short for twice the rows."""
    if choice != "auto":
        return choice == "batched"
    free = runtime.free_vram(dit.device, patcher_of(dit))
    if free is None:
        return True
    scale = dit.vae_scale_factor
    need = vram_plan.dit_step_bytes(dit.transformer.config, height // scale, width // scale, 2 * pictures,
                                    act_bytes=dit.dtype.itemsize)
    return need + extra_bytes < free


def _decode(bundle: DecoderBundle, inputs: DecodeInputs, seed: int, progress, guidance_batching: str) -> torch.Tensor:
    dit = bundle.dit
    device, dtype = dit.device, dit.dtype
    batch = inputs.grids.shape[0]
    do_cfg = inputs.guidance > 1.0

    # 1. Glyph embeddings: the conditional branch sees the prompt's quoted text, the other one nothing.
    prompt_embeds = encode_glyphs(bundle.glyph, inputs.prompt, device, dtype)
    negative_embeds = encode_glyphs(bundle.glyph, "", device, dtype) if do_cfg else None

    # 2. Source images -> VAE latents (image-to-image), then noise.
    sources = encode_sources(bundle.vae_model, inputs.sources, inputs.source_grids, dtype) if inputs.sources else []
    latents = prepare_latents(dit, batch, inputs.height, inputs.width, seed, device, dtype)

    # 3. The DiT: the sources' keys/values once, the schedule, then the denoising loop.
    ensure_on_device(dit, dit.transformer, device)
    transformer = dit.transformer
    kv = None
    if sources:
        ids = [d16_ids(g) for g in inputs.source_grids]
        kv = build_source_kv(transformer, sources, ids, dit.vae_scale_factor)
    scheduler, timesteps = make_scheduler(bundle, inputs.steps, image_seq_len(dit, inputs.height, inputs.width),
                                          device)
    prior_ids = d16_ids(inputs.grids).to(device)
    rotary = tuple(t.to(device) for t in transformer.rope(latents))  # same for every step: compute once
    keep, drop = torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)
    common = dict(pixel_scale=dit.vae_scale_factor, source_kv=kv, rotary=rotary)
    cond = dict(glyphs=prompt_embeds.expand(batch, -1, -1), prior_ids=prior_ids, prior_drop=keep)
    batched = do_cfg and batch_guidance(dit, inputs.height, inputs.width, batch, guidance_batching,
                                        kv.nbytes if kv is not None else 0)
    if do_cfg and batched:
        glyphs, lengths = pad_glyphs([prompt_embeds] * batch + [negative_embeds] * batch)
        both = dict(glyphs=glyphs, glyph_lengths=lengths, prior_ids=prior_ids.repeat(2, 1),
                    prior_drop=torch.cat([keep, drop]), read_sources=torch.cat([drop, keep]) if kv else None)
    elif do_cfg:
        uncond = dict(glyphs=negative_embeds.expand(batch, -1, -1), prior_ids=prior_ids, prior_drop=drop,
                      read_sources=keep if kv else None)
    for t in timesteps:
        runtime.check_interrupted()
        latent_input = latents.to(dtype)
        timestep = t.expand(batch) - 1  # the DiT was trained on t-1 (see make_scheduler)
        if do_cfg and batched:
            noise_pred, noise_uncond = velocity(transformer, latent_input.repeat(2, 1, 1, 1), timestep.repeat(2),
                                                **both, **common).float().chunk(2)
        else:
            noise_pred = velocity(transformer, latent_input, timestep, **cond, **common).float()
            if do_cfg:
                noise_uncond = velocity(transformer, latent_input, timestep, **uncond, **common).float()
        if do_cfg:
            noise_pred = noise_uncond + inputs.guidance * (noise_pred - noise_uncond)
        latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
        progress.update(1)

    # 4. Latents -> pixels, one picture at a time to bound the VAE's peak memory.
    return decode_latents(bundle.vae_model, latents)


def decode_latents(vae_model: VAEModel, latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
    """Un-normalise model-space latents and decode: [N,C,h,w] -> [N,H,W,3] 0..1 float32 on the CPU.

    `tiled` None = tiled only when one whole picture would not fit in free VRAM
    (diffusers' own tiled decode, whose tiles blend over their overlaps)."""
    ensure_on_device(vae_model, vae_model.vae, vae_model.device)
    latents = vae_model.latent_stats.denormalise(latents.to(vae_model.device, vae_model.dtype))
    if tiled is None:
        free = runtime.free_vram(vae_model.device, patcher_of(vae_model))
        tiled = free is not None and free < vram_plan.vae_decode_bytes(
            vae_model.vae.config, latents.shape[-2], latents.shape[-1], vae_model.dtype.itemsize)
    pictures = []
    for latent in latents.split(1):
        decode = vae_model.vae.tiled_decode if tiled else vae_model.vae.decode
        image = decode(latent, return_dict=False)[0]
        pictures.append((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu())
    return torch.cat(pictures)
