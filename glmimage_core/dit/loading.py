"""Loading GLM-Image's diffusion decoder: DiT, VAE, glyph encoder (T5/ByT5), tokenizer, scheduler.

The decoder is the second half of the hub's diffusers layout (`transformer/`,
`vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`); the AR half
(`vision_language_encoder/`, `processor/`) is ignored here. Every component can
also come from a folder of its own, so a user with a separately downloaded or
converted DiT does not need to rebuild the hub tree.

Weights are read from local safetensors only (never pickles, never the network,
never remote code). Loaded bundles are cached so that re-running a graph does
not reload ~14 GB; one bundle per path is kept.

Each of the three weighted parts is its own object (`DiTModel`, `VAEModel`,
`GlyphEncoder`) with its own cache entry, because inside ComfyUI each is its own
managed model: the DiT is a native ComfyUI `MODEL`, the VAE a ComfyUI `VAE`,
and ComfyUI pages them in and out of VRAM one at a time. `DecoderBundle` groups
them (+ the scheduler settings) for the "GLM-Image decode" node and the CLI.

dtype policy ("auto" = the checkpoint's own dtype when the device handles it,
else fp32):
- DiT and glyph encoder use the chosen dtype; the DiT can also store its Linear
  weights in fp8 inside ComfyUI (`weight_dtype`, parsed once by the loader, see cast_layers).
- The VAE uses it too, except fp16: AutoencoderKL decoders overflow in fp16 on
  bright images, so the VAE stays fp32 then (it is small next to the DiT).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..memory import vram_plan
from ..weights.cast_layers import make_castable, parse_weight_dtype
from ..dtypes import DEFAULT_WEIGHTS, WeightDtype, resolve_dtype
from ..errors import GlmImageInputError
from ..memory.placement import forget
from ..memory.model_cache import ModelCache
from ..weights.model_folders import resolve_model_path
from ..payloads import DecoderBundle, DiTModel, GlyphEncoder, LatentStats, VAEModel, latent_stats_of
from ..memory.host import fp8_storage_possible, host, torch_device
from ..weights.files import check_safetensors, checkpoint_dtype
from . import file_loading

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHTED = ("transformer", "vae", "text_encoder")


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


def vae_dtype_for(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.float16 else dtype


def _module_of(part) -> torch.nn.Module:
    """The torch module of a cached part (DiTModel, VAEModel or GlyphEncoder): what the host places."""
    return part.transformer if isinstance(part, DiTModel) else part.vae if isinstance(part, VAEModel) \
        else part.text_encoder


def _empty_cache() -> None:
    host().empty_cache()


_CACHE: ModelCache[DecoderBundle] = ModelCache()  # one bundle per root folder
# (kind, folder) -> DiTModel | VAEModel | GlyphEncoder
_PARTS: ModelCache = ModelCache(release=lambda part: forget(_module_of(part)), free=_empty_cache)
_CACHE_LOCK = threading.RLock()  # one load at a time: a bundle and its parts


def load_decoder(path: str | os.PathLike | Mapping[str, str] | None = None, dtype: str = "auto",
                 device: str = "auto", *, transformer: str | os.PathLike | None = None,
                 vae: str | os.PathLike | None = None, text_encoder: str | os.PathLike | None = None,
                 tokenizer: str | os.PathLike | None = None, scheduler: str | os.PathLike | None = None,
                 weight_dtype: str = "default") -> DecoderBundle:
    """Load (or return the cached) decoder bundle.

    `path` is the hub-layout folder (or a name under models/glm_image/); the
    keyword folders replace single components of it, or give all five when
    there is no common folder. A mapping as `path` is read as those keywords.
    The same folder asked for with another dtype/device replaces the cached
    copy instead of holding two (each is ~14 GB in bf16); the parts are shared
    with the single-part loaders (`load_dit`, `load_vae`, `load_glyph_encoder`).
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
    weights = parse_weight_dtype(weight_dtype, fp8_storage_possible())
    torch_dtype = resolve_dtype(dtype, target, checkpoint_dtype(folders.transformer))
    key = (tuple(str(getattr(folders, c)) for c in COMPONENTS), torch_dtype, str(target), weights)
    with _CACHE_LOCK:
        return _CACHE.get_or_load(folders.root, key, lambda: _bundle(folders, torch_dtype, target, weights))


def _bundle(folders: DecoderFolders, torch_dtype: torch.dtype, target: torch.device,
            weights: WeightDtype) -> DecoderBundle:
    dit = _dit(folders, torch_dtype, target, weights)
    vae_model = _vae(folders.vae, torch_dtype, target)
    glyph = _glyph(folders, torch_dtype, target)
    _check_compatible(folders, dit.transformer, vae_model.vae, glyph.text_encoder)
    sched = _guarded("scheduler", folders.scheduler, lambda: _scheduler_class().from_pretrained(
        folders.scheduler, local_files_only=True))
    return DecoderBundle(dit=dit, vae_model=vae_model, glyph=glyph, scheduler=sched, path=folders.root)


def load_dit(path: str | os.PathLike, dtype: str = "auto", device: str = "auto",
             weight_dtype: str = "default") -> DiTModel:
    """The DiT of a hub-layout folder (its vae/ and scheduler/ folders give latent statistics and shift) or of a
    single file (which carries them in its metadata)."""
    if file_loading.is_file(resolve_model_path(str(path))):
        return file_loading.load_dit_file(resolve_model_path(str(path)), dtype, device, weight_dtype)
    folders = find_folders(path, {})
    check_safetensors(folders.transformer, "transformer")
    target = torch_device(device)
    weights = parse_weight_dtype(weight_dtype, fp8_storage_possible())
    with _CACHE_LOCK:
        return _dit(folders, resolve_dtype(dtype, target, checkpoint_dtype(folders.transformer)), target,
                    weights)


def load_vae(path: str | os.PathLike, dtype: str = "auto", device: str = "auto") -> VAEModel:
    """The VAE of a hub-layout folder or of a single file."""
    if file_loading.is_file(resolve_model_path(str(path))):
        return file_loading.load_vae_file(resolve_model_path(str(path)), dtype, device)
    folders = find_folders(path, {})
    check_safetensors(folders.vae, "vae")
    target = torch_device(device)
    with _CACHE_LOCK:
        return _vae(folders.vae, resolve_dtype(dtype, target, checkpoint_dtype(folders.transformer)), target)


def load_glyph_encoder(path: str | os.PathLike, dtype: str = "auto", device: str = "auto") -> GlyphEncoder:
    """The glyph encoder (ByT5 + its tokenizer) of a hub-layout folder or of a single file."""
    if file_loading.is_file(resolve_model_path(str(path))):
        return file_loading.load_glyph_file(resolve_model_path(str(path)), dtype, device)
    folders = find_folders(path, {})
    check_safetensors(folders.text_encoder, "text_encoder")
    target = torch_device(device)
    with _CACHE_LOCK:
        return _glyph(folders, resolve_dtype(dtype, target, checkpoint_dtype(folders.text_encoder)), target)


def cached_decoders() -> list[DecoderBundle]:
    return _CACHE.values()


def clear_decoder_cache() -> None:
    with _CACHE_LOCK:
        _PARTS.clear()
        _CACHE.clear()
    host().empty_cache()


def _part(kind: str, folder: Path, options: tuple, load):
    """One cached part per (kind, folder): the same options return it, other options replace it."""
    return _PARTS.get_or_load((kind, str(folder)), options, load)


def _scheduler_class():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler


def _read_config(folder: Path, component: str) -> dict:
    try:
        return json.loads((folder / ("scheduler_config.json" if component == "scheduler" else "config.json"))
                          .read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GlmImageInputError(f"{component} folder {str(folder)!r} has no readable config ({err}); download "
                                 "it again from zai-org/GLM-Image") from err


def _prepare(module: torch.nn.Module, device: torch.device, fp8_dtype: torch.dtype | None = None,
             keep=lambda name: False) -> None:
    """Eval mode, no grads; the host's cast layers where it has them (ComfyUI), then where the host parks a model
    until its first run (ComfyUI: the offload device, its manager moves it; plain torch: `device`)."""
    module.eval().requires_grad_(False)
    ops = host().cast_ops
    if ops is not None:
        make_castable(module, ops.operations, fp8_dtype, keep, fp8_operations=ops.fp8_operations)
    module.to(host().park_device(device))


def _dit(folders: DecoderFolders, dtype: torch.dtype, device: torch.device, weights: WeightDtype) -> DiTModel:
    vae_config = _read_config(folders.vae, "vae")
    latent_stats_of(vae_config, str(folders.vae))  # not GLM-Image's VAE: say so before loading 13 GB
    scheduler_config = _read_config(folders.scheduler, "scheduler")

    return _part("transformer", folders.transformer, (dtype, str(device), weights, str(folders.vae),
                                                      str(folders.scheduler)),
                 lambda: _read_dit(folders.transformer, dtype, device, scheduler_config, vae_config, weights))


def _read_dit(folder: Path, dtype: torch.dtype, device: torch.device, scheduler_config: dict, vae_config,
              weights: WeightDtype) -> DiTModel:
    """The DiT read from its `transformer/` folder or its file and prepared: for the cache and fresh copies alike.
    A file, or the folder kept in fp8 (the host has fp8 cast layers), is read lean (dit/file_loading)."""
    from diffusers import GlmImageTransformer2DModel

    if folder.is_file() or not weights.is_default:
        dit = file_loading.read_dit(folder, dtype, weights)
        return prepare_dit(dit, str(folder), dtype, device, scheduler_config, vae_config, weights)
    dit = _guarded("transformer", folder, lambda: GlmImageTransformer2DModel.from_pretrained(
        folder, torch_dtype=dtype, local_files_only=True, use_safetensors=True))
    return prepare_dit(dit, str(folder), dtype, device, scheduler_config, vae_config, weights)


def prepare_dit(dit: torch.nn.Module, path: str, dtype: torch.dtype, device: torch.device, scheduler_config: dict,
                vae_config, weight_dtype: WeightDtype | str = DEFAULT_WEIGHTS) -> DiTModel:
    """A loaded GlmImageTransformer2DModel made ready for the pack (eval, counted, ComfyUI cast layers / fp8).

    Separate from loading so that benchmarks can prepare DiTs built in place with random weights (they may name
    `weight_dtype` as a string; it is parsed as the loaders parse it)."""
    weights = parse_weight_dtype(weight_dtype, fp8_storage_possible())
    inventory = vram_plan.inventory(dit, vram_plan.classify_dit, dtype)
    _prepare(dit, device, weights.storage, lambda name: vram_plan.name_matches(name, vram_plan.DIT_FP8_KEEP))
    return DiTModel(transformer=dit, path=path, dtype=dtype, device=device, scheduler_config=dict(scheduler_config),
                    latent_stats=latent_stats_of(vae_config, path),
                    vae_scale_factor=2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1),
                    weight_dtype=weights, inventory=inventory)


def _vae(folder: Path, dtype: torch.dtype, device: torch.device) -> VAEModel:
    vae_dtype = vae_dtype_for(dtype)
    return _part("vae", folder, (vae_dtype, str(device)), lambda: _read_vae(folder, vae_dtype, device))


def _read_vae(folder: Path, vae_dtype: torch.dtype, device: torch.device) -> VAEModel:
    """The VAE read from its `vae/` folder (checked to be GLM-Image's) and prepared: for the cache and for fresh
    copies alike."""
    from diffusers import AutoencoderKL

    vae_model = file_loading.read_vae(folder, vae_dtype) if folder.is_file() else _guarded(
        "vae", folder, lambda: AutoencoderKL.from_pretrained(folder, torch_dtype=vae_dtype, local_files_only=True,
                                                             use_safetensors=True))
    latent_stats_of(vae_model.config, str(folder))
    _prepare(vae_model, device)
    return VAEModel(vae=vae_model, path=str(folder), dtype=vae_dtype, device=device)


def _glyph(folders: DecoderFolders, dtype: torch.dtype, device: torch.device) -> GlyphEncoder:
    def load() -> GlyphEncoder:
        from transformers import AutoTokenizer, T5EncoderModel

        encoder = _guarded("text_encoder", folders.text_encoder, lambda: T5EncoderModel.from_pretrained(
            folders.text_encoder, dtype=dtype, trust_remote_code=False, local_files_only=True,
            use_safetensors=True))
        tok = _guarded("tokenizer", folders.tokenizer, lambda: AutoTokenizer.from_pretrained(
            folders.tokenizer, local_files_only=True, trust_remote_code=False))
        _prepare(encoder, device)
        return GlyphEncoder(text_encoder=encoder, tokenizer=tok, path=str(folders.text_encoder), dtype=dtype,
                            device=device)

    return _part("text_encoder", folders.text_encoder, (dtype, str(device), str(folders.tokenizer)), load)


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


def fresh_dit(path: str, dtype: torch.dtype, device: str, weight_dtype: WeightDtype, scheduler_config: dict,
              latent_stats: LatentStats, vae_scale_factor: int) -> DiTModel:
    """A new copy of a DiT read again from its `transformer/` folder, outside the cache: weights of its own.

    ComfyUI's deep clones (a MODEL's `cached_patcher_init`: multi-GPU copies, the training node,
    the dynamic-VRAM fallback) need a copy that shares no tensor with the cached DiT; the other
    settings are the cached DiT's own values, so the copy computes exactly what it does."""
    folder = Path(path)
    if folder.is_dir():
        check_safetensors(folder, "transformer")
    stats = {"latents_mean": list(latent_stats.mean), "latents_std": list(latent_stats.std)}
    dit = _read_dit(folder, dtype, torch.device(device), scheduler_config, stats, weight_dtype)
    dit.vae_scale_factor = int(vae_scale_factor)
    return dit


def fresh_vae(path: str, dtype: torch.dtype, device: str) -> VAEModel:
    """A new copy of a VAE read again from its `vae/` folder, outside the cache (see `fresh_dit`)."""
    folder = Path(path)
    if folder.is_dir():
        check_safetensors(folder, "vae")
    return _read_vae(folder, dtype, torch.device(device))
