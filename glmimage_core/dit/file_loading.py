"""The decoder's parts from single files (and the DiT from its folder when it is kept in fp8), read lean.

A DiT file carries its scheduler settings and the VAE's config (latent statistics, scale factor) in its
metadata, so it loads alone; VAE and glyph encoder files carry their config (and the ByT5 tokenizer's files).
Parts are built from their config and filled tensor by tensor (weights/lean_load), so loading never holds a
part wider than it is kept: an fp8 file stays fp8, a bf16 folder asked for fp8 is rounded as it is read.
Cached like the folders' parts (one per path), by the same `_part` cache.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..dtypes import resolve_dtype
from ..errors import GlmImageInputError
from ..memory import vram_plan
from ..memory.host import fp8_storage_possible, torch_device
from ..payloads import DiTModel, GlyphEncoder, VAEModel, latent_stats_of
from ..weights import formats
from ..dtypes import WeightDtype
from ..weights.cast_layers import parse_weight_dtype
from ..weights.part_loading import file_json, file_weight_dtype, lean_model, text_folder


def is_file(path) -> bool:
    return Path(path).is_file()


def read_dit(path: Path, dtype: torch.dtype, weights: WeightDtype) -> torch.nn.Module:
    """The DiT of a file, or of a `transformer/` folder kept in fp8 (rounded tensor by tensor as it is read)."""
    source = formats.inspect(path, want="dit")
    store = None if source.storage.startswith("fp8") else weights.storage
    model, _ = lean_model(source, "dit", dtype, store,
                          lambda name: vram_plan.name_matches(name, vram_plan.DIT_FP8_KEEP))
    return model


def read_vae(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    return lean_model(formats.inspect(path, want="vae"), "vae", dtype)[0]


def load_dit_file(path: str, dtype: str, device: str, weight_dtype: str) -> DiTModel:
    from . import loading

    source = formats.inspect(path, want="dit")
    kept = parse_weight_dtype(file_weight_dtype(source, str(weight_dtype)), fp8_storage_possible())
    scheduler_config = file_json(source, "scheduler/scheduler_config.json")
    vae_config = file_json(source, "vae/config.json")
    latent_stats_of(vae_config, str(source.path))
    target = torch_device(device)
    torch_dtype = resolve_dtype(dtype, target, torch.bfloat16)
    with loading._CACHE_LOCK:
        return loading._part("transformer", source.path, (torch_dtype, str(target), kept), lambda: loading._read_dit(
            source.path, torch_dtype, target, scheduler_config, vae_config, kept))


def load_vae_file(path: str, dtype: str, device: str) -> VAEModel:
    from . import loading

    source = formats.inspect(path, want="vae")
    latent_stats_of(source.config, str(source.path))
    target = torch_device(device)
    vae_dtype = loading.vae_dtype_for(resolve_dtype(dtype, target, torch.bfloat16))
    with loading._CACHE_LOCK:
        return loading._part("vae", source.path, (vae_dtype, str(target)),
                             lambda: loading._read_vae(source.path, vae_dtype, target))


def load_glyph_file(path: str, dtype: str, device: str) -> GlyphEncoder:
    from . import loading

    source = formats.inspect(path, want="glyph")
    target = torch_device(device)
    torch_dtype = resolve_dtype(dtype, target, torch.bfloat16)

    def load() -> GlyphEncoder:
        from transformers import AutoTokenizer

        encoder = lean_model(source, "glyph", torch_dtype)[0]
        try:
            tok = AutoTokenizer.from_pretrained(text_folder(source, "tokenizer/"), local_files_only=True,
                                                trust_remote_code=False)
        except (OSError, ValueError, TypeError) as err:
            raise GlmImageInputError(f"could not build the ByT5 tokenizer from {source.path.name!r}: {err}") from err
        loading._prepare(encoder, target)
        return GlyphEncoder(text_encoder=encoder, tokenizer=tok, path=str(source.path), dtype=torch_dtype,
                            device=target)

    with loading._CACHE_LOCK:
        return loading._part("text_encoder", source.path, (torch_dtype, str(target)), load)
