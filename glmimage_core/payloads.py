"""What travels between the nodes: the payload of every GLMIMAGE_* socket, in one module.

Behaviour modules (loading, prompting, sampling, extraction, decoding) import
these types from here; nodes/sockets.py names this module only. `GridShape`
(shapes.py) and `SourceImage` (images.py) are re-exported: they live with their
parsing and resizing, which they need.

- `ARModel` (GLMIMAGE_AR), `GridShape` (GLMIMAGE_SHAPE), `GlmImageInputs`
  (GLMIMAGE_INPUTS), `GeneratedTokens` (GLMIMAGE_TOKENS), `PriorTokens`
  (GLMIMAGE_PRIOR), `DecoderBundle` (GLMIMAGE_DECODER), `GlyphEncoder`
  (GLMIMAGE_GLYPH); `DiTModel` and `VAEModel` travel inside ComfyUI's MODEL and
  VAE, `LatentStats` inside both.

`PriorTokens` holds d32 grids as the AR model sampled them; the decoder wants d16
(each token repeated 2x2), which `upsample_d32_to_d16` derives, so only one copy
is stored.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from .errors import GlmImageInputError
from .images import SourceImage
from .shapes import PIXELS_PER_TOKEN, GridShape

__all__ = ["ARModel", "DecoderBundle", "DiTModel", "GeneratedTokens", "GlmImageInputs", "GlyphEncoder", "GridShape",
           "Inventory", "LatentStats", "PriorTokens", "SourceImage", "VAEModel", "d16_ids", "latent_stats_of",
           "upsample_d32_to_d16"]


def upsample_d32_to_d16(grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of [..., H, W] ids, as `GlmImagePipeline._upsample_token_ids`."""
    return grid.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def d16_ids(grids: torch.Tensor) -> torch.Tensor:
    """d32 grids [N, H, W] (or one [H, W]) -> the DiT's d16 prior ids, one row per grid: [N (or 1), 4*H*W]."""
    return upsample_d32_to_d16(grids).reshape(grids.shape[0] if grids.dim() == 3 else 1, -1)


@dataclass
class Inventory:
    """A model's parameters by kind, independent of where they live (counted by `memory.vram_plan.inventory`;
    the VRAM plan prices them per weight option)."""

    linear_numel: dict[str, int] = field(default_factory=dict)  # Linear weights by kind (see `classify`)
    other_bytes: int = 0  # everything else (norms, biases, convs, embeddings, buffers) at its own dtype
    host_bytes: int = 0  # embeddings kept in host RAM
    dtype_bytes: int = 2  # element size the Linear weights have at the model's dtype

    @property
    def total_numel_bytes(self) -> int:
        return sum(self.linear_numel.values()) * self.dtype_bytes + self.other_bytes + self.host_bytes


@dataclass
class PriorTokens:
    """Image tokens for N pictures of one shape, ready for the diffusion decoder.

    grids: [N, token_h, token_w] int64 codebook ids (d32: one id per 32x32 px).
    source_grids: for image-to-image, one [h, w] d32 grid per source image (shared
        by all N samples, as the sources are); empty for text-to-image.
    codebook_size: ids must be < this; the decoder checks it against its DiT.
    palette: [codebook_size, 3] colours from the codebook of the model that sampled the
        grids (`token_preview.model_palette`), so the preview node colours them as the live
        preview did. In memory only: token files do not store it (None after loading one,
        and then the preview falls back to fixed hues).
    """

    grids: torch.Tensor
    mode: str  # "t2i" or "i2i"
    prompt: str
    codebook_size: int
    source_grids: list[torch.Tensor] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    palette: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def token_h(self) -> int:
        return int(self.grids.shape[-2])

    @property
    def token_w(self) -> int:
        return int(self.grids.shape[-1])

    @property
    def batch_size(self) -> int:
        return int(self.grids.shape[0])

    @property
    def height(self) -> int:
        return PIXELS_PER_TOKEN * self.token_h

    @property
    def width(self) -> int:
        return PIXELS_PER_TOKEN * self.token_w

    def d16(self) -> torch.Tensor:
        """[N, 4*H*W] ids as `GlmImagePipeline(prior_token_ids=...)` expects them."""
        return d16_ids(self.grids)

    def source_d16(self) -> list[torch.Tensor]:
        """Flat d16 ids per source image, as diffusers' `prior_token_image_ids` holds them."""
        return [upsample_d32_to_d16(g).reshape(-1) for g in self.source_grids]


# --------------------------------------------------------------------------- AR stage


@dataclass(eq=False)
class ARModel:
    """What a `GLMIMAGE_AR` socket carries: the model, its processor and how they were loaded.

    `lock` serialises generation: the model keeps decode positions
    (`rope_deltas`) on its instance, so two concurrent `generate` calls on one
    instance would corrupt each other.
    """

    model: torch.nn.Module
    processor: object
    path: str
    dtype: torch.dtype
    device: torch.device
    attention: str
    quantization: str = "none"
    weight_dtype: str = "default"
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Submodules that must sit on the device even when ComfyUI streams the rest (read without a forward).
    pinned: list[str] = field(default_factory=list)
    #: Parameter counts by kind, for the VRAM plan (Inventory).
    inventory: Inventory | None = None
    #: Whether the text embedding table stays in RAM (inside ComfyUI: cast_layers.HostEmbedding).
    embeddings_on_host: bool = False
    #: (batch, total length) shapes speed=compiled has compiled for (transformers keeps the compiled step).
    compiled_shapes: set = field(default_factory=set, repr=False)

    @property
    def config(self):
        return self.model.config

    @property
    def codebook_size(self) -> int:
        return int(self.config.vq_config.num_embeddings)

    @property
    def image_start_id(self) -> int:
        return int(self.config.image_start_token_id)

    @property
    def image_end_id(self) -> int:
        return int(self.config.image_end_token_id)


@dataclass
class GlmImageInputs:
    """Everything the token stage needs for one prompt."""

    prompt: str
    shape: GridShape
    mode: str  # "t2i" or "i2i"
    model_inputs: dict[str, torch.Tensor]
    sources: list[SourceImage] = field(default_factory=list)

    @property
    def source_grids(self) -> list[tuple[int, int]]:
        return [s.grid for s in self.sources]

    @property
    def input_length(self) -> int:
        return int(self.model_inputs["input_ids"].shape[-1])


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
    notes: list[str] = field(default_factory=list)  # e.g. why speed=compiled fell back to standard
    # [codebook_size, 3] colours from the sampling model's codebook (token_preview.model_palette), for
    # the preview node; None when the model's codebook could not be read (then: fixed hues).
    palette: torch.Tensor | None = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------------- decoder


@dataclass(frozen=True)
class LatentStats:
    """GLM-Image's per-channel latent normalisation (the VAE config's latents_mean / latents_std).

    The DiT works on normalised latents; the VAE reads and writes raw ones."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.mean)

    def tensors(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.channels, 1, 1)
        return (torch.tensor(self.mean).view(shape).to(device, dtype), torch.tensor(self.std).view(shape).to(device, dtype))

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self.tensors(raw.device, raw.dtype)
        return (raw - mean) / std

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self.tensors(latents.device, latents.dtype)
        return latents * std + mean


@dataclass(eq=False)
class DiTModel:
    """GLM-Image's DiT (diffusers `GlmImageTransformer2DModel`) and what sampling it needs.

    `lock` serialises use: the source-image KV cache and the module placement are per-run state."""

    transformer: torch.nn.Module
    path: str
    dtype: torch.dtype  # compute dtype
    device: torch.device
    scheduler_config: dict  # FlowMatchEulerDiscreteScheduler settings (shift parameters)
    latent_stats: LatentStats
    vae_scale_factor: int
    weight_dtype: str = "default"
    inventory: Inventory | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def codebook_size(self) -> int:
        return int(self.transformer.config.prior_vq_quantizer_codebook_size)

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)


@dataclass(eq=False)
class VAEModel:
    """GLM-Image's VAE (diffusers `AutoencoderKL`, 16 latent channels, 8x per side)."""

    vae: torch.nn.Module
    path: str
    dtype: torch.dtype
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_stats(self) -> LatentStats:
        return latent_stats_of(self.vae.config, self.path)


@dataclass(eq=False)
class GlyphEncoder:
    """The ByT5 (T5 encoder) that turns the prompt's quoted text into glyph embeddings for the DiT."""

    text_encoder: torch.nn.Module
    tokenizer: object
    path: str
    dtype: torch.dtype
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def embed_dim(self) -> int:
        return int(self.text_encoder.config.d_model)


@dataclass(eq=False)
class DecoderBundle:
    """What a `GLMIMAGE_DECODER` socket carries: DiT, VAE, glyph encoder and the scheduler, loaded together.

    `lock` serialises decoding with this bundle (the parts have their own locks
    for the native nodes, which use them one at a time)."""

    dit: DiTModel
    vae_model: VAEModel
    glyph: GlyphEncoder
    scheduler: object  # diffusers FlowMatchEulerDiscreteScheduler (a template: decoding copies it)
    path: str
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Most bytes of the DiT kept on the GPU while decoding (the rest streams); None = ComfyUI decides.
    #: A placement choice, not part of the weights: each loader node hands out its own copy of the cached
    #: bundle (`dataclasses.replace`: same parts, same lock) with its own limit.
    vram_limit: int | None = None

    # The parts as plain modules (what the denoising steps and the tests read).
    @property
    def transformer(self) -> torch.nn.Module:
        return self.dit.transformer

    @property
    def vae(self) -> torch.nn.Module:
        return self.vae_model.vae

    @property
    def text_encoder(self) -> torch.nn.Module:
        return self.glyph.text_encoder

    @property
    def tokenizer(self):
        return self.glyph.tokenizer

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.vae_model.dtype

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def codebook_size(self) -> int:
        return self.dit.codebook_size

    @property
    def vae_scale_factor(self) -> int:
        return self.vae_model.scale_factor

    @property
    def patch_size(self) -> int:
        return self.dit.patch_size


def latent_stats_of(vae_config, where: str) -> LatentStats:
    if vae_config.get("latents_mean") is None or vae_config.get("latents_std") is None:
        raise GlmImageInputError(f"vae {where!r} has no latents_mean/latents_std in its config: "
                                 "it is not GLM-Image's VAE")
    return LatentStats(tuple(float(v) for v in vae_config["latents_mean"]),
                       tuple(float(v) for v in vae_config["latents_std"]))
