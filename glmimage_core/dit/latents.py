"""GLM-Image's latents, once: the starting noise, the VAE's raw latents, the source images' DiT keys/values,
and the decode back to pixels.

The DiT works on latents normalised per channel (the VAE config's
latents_mean / latents_std, `payloads.LatentStats`); the VAE reads and writes
raw ones. Both samplers of the pack use these steps: the engine's loop
(dit/sampling.py) all of them; ComfyUI's path (glmimage_comfy) the VAE calls
(`vae_encode` / `vae_decode` inside its `VAE`), the source images' keys/values
(`source_kv`, built by the native MODEL on its first forward) and the tiling fit,
while ComfyUI's own VAE node code does the pixel range and the tiling itself.
"""

from __future__ import annotations

import torch

from ..images import source_pixels
from ..memory.host import host
from ..memory.placement import ensure_on_device
from ..payloads import DiTModel, LatentStats, VAEModel
from .fit import vae_decode_must_tile
from .forward import SourceKV, build_source_kv


def prepare_latents(dit: DiTModel, batch: int, height: int, width: int, seed: int,
                    device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Initial noise, drawn on the CPU from `seed` (as diffusers does with a CPU generator), then moved."""
    from diffusers.utils.torch_utils import randn_tensor

    scale = dit.vae_scale_factor
    shape = (batch, dit.latent_channels, height // scale, width // scale)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


def vae_encode(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """diffusers' AutoencoderKL: pixels [N,3,H,W] in -1..1 -> raw latents (the distribution's mode, as GLM-Image)."""
    return vae.encode(pixels).latent_dist.mode()


def vae_decode(vae: torch.nn.Module, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """diffusers' AutoencoderKL: raw latents -> pixels in -1..1 (its own tiled decode, blended overlaps, if asked)."""
    decode = vae.tiled_decode if tiled else vae.decode
    return decode(latents, return_dict=False)[0]


def encode_sources(vae_model: VAEModel, images: list[torch.Tensor], grids: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each source image, resized to 32 px per source token, through the VAE: raw [1,C,h,w] latents."""
    ensure_on_device(vae_model.vae, vae_model.device)
    latents = []
    for image, grid in zip(images, grids):
        pixels = source_pixels(image, grid).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0
        latents.append(vae_encode(vae_model.vae, pixels.to(device=vae_model.device, dtype=vae_model.dtype)))
    return latents


def source_kv(transformer: torch.nn.Module, raw_latents: list[torch.Tensor], ids: list[torch.Tensor],
              stats: LatentStats, pixel_scale: int, device: torch.device, dtype: torch.dtype) -> SourceKV:
    """The source images' keys/values for image-to-image: raw VAE latents normalised (in float32), in the DiT's
    dtype, with their d16 ids [1, S], run once through the DiT (forward.build_source_kv)."""
    latents = [stats.normalise(lat.to(device, torch.float32)).to(dtype) for lat in raw_latents]
    return build_source_kv(transformer, latents, [i.to(device) for i in ids], pixel_scale)


def decode_latents(vae_model: VAEModel, latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
    """Un-normalise model-space latents and decode: [N,C,h,w] -> [N,H,W,3] 0..1 float32 on the CPU.

    One picture at a time (bounds the VAE's peak memory); `tiled` None = tiled
    only when one whole picture would not fit in free VRAM (fit.vae_decode_must_tile)."""
    ensure_on_device(vae_model.vae, vae_model.device)
    latents = vae_model.latent_stats.denormalise(latents.to(vae_model.device, vae_model.dtype))
    if tiled is None:
        tiled = vae_decode_must_tile(vae_model.vae.config, latents.shape[-2], latents.shape[-1],
                                     vae_model.dtype.itemsize, host().free_memory(vae_model.device, vae_model.vae))
    pictures = []
    for latent in latents.split(1):
        image = vae_decode(vae_model.vae, latent, tiled)
        pictures.append((image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu())
    return torch.cat(pictures)
