"""Loading GLM-Image's diffusion decoder: DiT, VAE, glyph encoder (T5/ByT5), tokenizer, scheduler.

The decoder is the second half of the hub's diffusers layout (`transformer/`,
`vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`); the AR half
(`vision_language_encoder/`, `processor/`) is ignored here. Every component can
also come from a folder of its own, so a user with a separately downloaded or
converted DiT does not need to rebuild the hub tree.

Weights are read from local safetensors only (never pickles, never the network,
never remote code). Loaded bundles are cached so that re-running a graph does
not reload ~14 GB; one bundle per path is kept.

dtype policy ("auto" = the checkpoint's own dtype when the device handles it,
else fp32):
- DiT and glyph encoder use the chosen dtype.
- The VAE uses it too, except fp16: AutoencoderKL decoders overflow in fp16 on
  bright images, so the VAE stays fp32 then (it is small next to the DiT).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .dtypes import resolve_dtype
from .errors import GlmImageInputError
from .memory import forget
from .model_folders import resolve_model_path
from .runtime import free_memory_cache, torch_device

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_WEIGHTED = ("transformer", "vae", "text_encoder")


@dataclass(eq=False)
class DecoderBundle:
    """What a `GLMIMAGE_DECODER` socket carries: the five decoder parts and how they were loaded.

    `lock` serialises decoding: the DiT's KV cache for source images and the
    module placement are per call state, and two graphs decoding at once on one
    bundle would otherwise move modules under each other's feet.
    """

    transformer: torch.nn.Module  # diffusers GlmImageTransformer2DModel
    vae: torch.nn.Module  # diffusers AutoencoderKL
    text_encoder: torch.nn.Module  # transformers T5EncoderModel (glyph encoder)
    tokenizer: object  # ByT5Tokenizer (whatever tokenizer class the folder names)
    scheduler: object  # diffusers FlowMatchEulerDiscreteScheduler (a template: decode copies it)
    path: str
    dtype: torch.dtype
    device: torch.device
    vae_dtype: torch.dtype = torch.float32
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def codebook_size(self) -> int:
        return int(self.transformer.config.prior_vq_quantizer_codebook_size)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)


@dataclass(frozen=True)
class DecoderFolders:
    """Where each component lives; `root` names the bundle in messages and in the cache."""

    root: str
    transformer: Path
    vae: Path
    text_encoder: Path
    tokenizer: Path
    scheduler: Path


def find_folders(path: str | os.PathLike | None, overrides: Mapping[str, str | os.PathLike | None]) -> DecoderFolders:
    """Resolve the five component folders from a hub-layout root and/or per-component folders."""
    unknown = sorted(set(overrides) - set(COMPONENTS))
    if unknown:
        raise GlmImageInputError(f"unknown decoder component(s) {unknown}: expected some of {list(COMPONENTS)}")
    root: Path | None = None
    if path is not None and str(path) != "":
        root = Path(resolve_model_path(str(path))).expanduser()
        if not root.exists():
            raise GlmImageInputError(f"decoder folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise GlmImageInputError(f"decoder {str(root)!r} is a file; choose the folder that holds "
                                     "transformer/, vae/, text_encoder/, tokenizer/ and scheduler/")
        root = root.resolve()
    folders: dict[str, Path] = {}
    for name in COMPONENTS:
        given = overrides.get(name)
        if given is not None and str(given) != "":
            folder = Path(resolve_model_path(str(given))).expanduser()
            if not folder.is_dir():
                raise GlmImageInputError(f"{name} folder {str(folder)!r} does not exist or is not a folder")
        elif root is not None:
            folder = root / name
            if not folder.is_dir():
                raise GlmImageInputError(
                    f"decoder folder {str(root)!r} has no '{name}/' folder: GLM-Image's decoder needs "
                    f"{', '.join(c + '/' for c in COMPONENTS)} (the hub layout of zai-org/GLM-Image); "
                    f"download '{name}/' or give its folder separately")
        else:
            raise GlmImageInputError(f"no decoder folder given and no '{name}' folder either: give the "
                                     "hub-layout folder, or all of " + ", ".join(COMPONENTS))
        folders[name] = folder.resolve()
    name = str(root) if root is not None else str(folders["transformer"].parent)
    return DecoderFolders(root=name, **folders)


def check_safetensors(folder: Path, component: str) -> list[Path]:
    """Fail early, with the file named, on a missing, truncated or garbled safetensors file.

    Reads only each file's header (a few KB), so a 14 GB DiT is checked in
    milliseconds; diffusers' own message for a truncated file does not say
    which file or what to do.
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise GlmImageInputError(f"{component} folder {str(folder)!r} has no .safetensors weights; "
                                 "only safetensors are loaded (no pickle .bin files)")
    for file in files:
        _read_header(file, component)
    return files


def _read_header(file: Path, component: str) -> dict:
    size = file.stat().st_size
    broken = f"{component} weights {str(file)!r} are corrupted or incomplete"
    try:
        with file.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise GlmImageInputError(f"{broken} (the file is {size} bytes); download it again")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > size - 8 or header_len > 100_000_000:
                raise GlmImageInputError(f"{broken} (bad header); download it again")
            header = json.loads(handle.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GlmImageInputError(f"{broken} (unreadable header: {err}); download it again") from err
    try:
        end = max((int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
        raise GlmImageInputError(f"{broken} (malformed header); download it again") from err
    if 8 + header_len + end != size:
        raise GlmImageInputError(f"{broken}: it should be {8 + header_len + end} bytes but is {size}; "
                                 "download it again")
    return header


def checkpoint_dtype(folder: Path) -> torch.dtype | None:
    """The float dtype most tensors of a component's safetensors use (configs do not say it for diffusers)."""
    counts: Counter = Counter()
    for file in sorted(folder.glob("*.safetensors"))[:1]:
        for key, info in _read_header(file, folder.name).items():
            if key != "__metadata__" and info.get("dtype") in _SAFETENSORS_DTYPES:
                counts[info["dtype"]] += 1
    return _SAFETENSORS_DTYPES[counts.most_common(1)[0][0]] if counts else None


def vae_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float16 else dtype


_CACHE: dict[str, tuple[tuple, DecoderBundle]] = {}
_CACHE_LOCK = threading.Lock()


def load_decoder(path: str | os.PathLike | Mapping[str, str] | None = None, dtype: str = "auto",
                 device: str = "auto", *, transformer: str | os.PathLike | None = None,
                 vae: str | os.PathLike | None = None, text_encoder: str | os.PathLike | None = None,
                 tokenizer: str | os.PathLike | None = None,
                 scheduler: str | os.PathLike | None = None) -> DecoderBundle:
    """Load (or return the cached) decoder bundle.

    `path` is the hub-layout folder (or a name under models/glm_image/); the
    keyword folders replace single components of it, or give all five when
    there is no common folder. A mapping as `path` is read as those keywords.
    The same folder asked for with another dtype/device replaces the cached
    copy instead of holding two (each is ~14 GB in bf16).
    """
    overrides = dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                     scheduler=scheduler)
    if isinstance(path, Mapping):
        overrides.update(path)
        path = overrides.pop("path", None) or overrides.pop("root", None)
    folders = find_folders(path, overrides)
    for name in _WEIGHTED:
        check_safetensors(getattr(folders, name), name)
    target = torch_device(device)
    torch_dtype = resolve_dtype(dtype, target, checkpoint_dtype(folders.transformer))
    key = (tuple(str(getattr(folders, c)) for c in COMPONENTS), torch_dtype, str(target))
    with _CACHE_LOCK:
        cached = _CACHE.get(folders.root)
        if cached is not None and cached[0] == key:
            return cached[1]
        if cached is not None:  # drop the other copy before loading a new one
            del _CACHE[folders.root]
            forget(cached[1])
            del cached
            free_memory_cache()
        bundle = _load(folders, torch_dtype, target)
        _CACHE[folders.root] = (key, bundle)
        return bundle


def cached_decoders() -> list[DecoderBundle]:
    with _CACHE_LOCK:
        return [entry[1] for entry in _CACHE.values()]


def clear_decoder_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
    free_memory_cache()


def _load(folders: DecoderFolders, dtype: torch.dtype, device: torch.device) -> DecoderBundle:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImageTransformer2DModel
    from transformers import AutoTokenizer, T5EncoderModel

    common = dict(local_files_only=True, use_safetensors=True)
    vae_dtype = vae_dtype_for(dtype)
    dit = _guarded("transformer", folders.transformer, lambda: GlmImageTransformer2DModel.from_pretrained(
        folders.transformer, torch_dtype=dtype, **common))
    vae_model = _guarded("vae", folders.vae, lambda: AutoencoderKL.from_pretrained(
        folders.vae, torch_dtype=vae_dtype, **common))
    encoder = _guarded("text_encoder", folders.text_encoder, lambda: T5EncoderModel.from_pretrained(
        folders.text_encoder, dtype=dtype, trust_remote_code=False, **common))
    tok = _guarded("tokenizer", folders.tokenizer, lambda: AutoTokenizer.from_pretrained(
        folders.tokenizer, local_files_only=True, trust_remote_code=False))
    sched = _guarded("scheduler", folders.scheduler, lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(
        folders.scheduler, local_files_only=True))
    _check_compatible(folders, dit, vae_model, encoder)
    for module in (dit, vae_model, encoder):
        module.eval().requires_grad_(False)
        module.to(device)
    return DecoderBundle(transformer=dit, vae=vae_model, text_encoder=encoder, tokenizer=tok, scheduler=sched,
                         path=folders.root, dtype=dtype, device=device, vae_dtype=vae_dtype)


def _guarded(component: str, folder: Path, load):
    """Turn library errors into one message that names the component folder."""
    try:
        return load()
    except GlmImageInputError:
        raise
    except Exception as err:  # safetensors, OSError, config errors: all mean "this folder is not usable"
        kind = "corrupted or incomplete" if "safetensor" in f"{type(err).__name__} {err}".lower() else "not loadable"
        raise GlmImageInputError(f"{component} folder {str(folder)!r} is {kind} ({type(err).__name__}: {err}); "
                                 "download it again from zai-org/GLM-Image") from err


def _check_compatible(folders: DecoderFolders, dit, vae_model, encoder) -> None:
    """Components from different folders must fit together; say which pair does not."""
    if dit.config.in_channels != vae_model.config.latent_channels:
        raise GlmImageInputError(f"transformer {str(folders.transformer)!r} takes {dit.config.in_channels} latent "
                                 f"channels but vae {str(folders.vae)!r} makes {vae_model.config.latent_channels}")
    if dit.config.text_embed_dim != encoder.config.d_model:
        raise GlmImageInputError(f"transformer {str(folders.transformer)!r} expects glyph embeddings of size "
                                 f"{dit.config.text_embed_dim} but text_encoder {str(folders.text_encoder)!r} "
                                 f"gives {encoder.config.d_model}")
    if vae_model.config.latents_mean is None or vae_model.config.latents_std is None:
        raise GlmImageInputError(f"vae {str(folders.vae)!r} has no latents_mean/latents_std in its config: "
                                 "it is not GLM-Image's VAE")
