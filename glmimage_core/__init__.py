"""The GLM-Image engine: the AR stage (prompt -> tokens), the token grids, the decoder stage (prior -> pixels).

Public API (these names stay; module paths below them may move, see CHANGELOG.md):

    load_ar_model(path, dtype=, device=, ...)      -> ARModel: the AR model + its processor, cached per folder
    prepare_inputs(processor, prompt, shape=, images=) -> GlmImageInputs: the chat prompt with the size written once
    generate_tokens(ar, inputs, seed=, ...)        -> GeneratedTokens: the AR model's sampled ids (`tokens`)
    extract_prior(tokens)                          -> PriorTokens: the grid(s) the decoder is conditioned on (`prior`)
    load_decoder(path, dtype=, device=, ...)       -> DecoderBundle: DiT + VAE + glyph encoder + scheduler
    decode(decoder, prior, prompt=, steps=, guidance=, seed=, source_images=) -> pixels (B, H, W, 3) in 0..1
    save_prior(prior, path) / load_prior(path)     token files (.safetensors, header checked before any tensor)
    render_grid(grids, codebook_size, palette=)    the false-colour picture of a grid
    GridShape, PriorTokens, GeneratedTokens, GlmImageInputError

Nothing here imports ComfyUI: inside ComfyUI the pack installs its host (`memory.host.install_host`), outside
it the engine runs on plain torch. Names are resolved on first use, so `import glmimage_core` stays cheap.
"""

from __future__ import annotations

import importlib

from .errors import GlmImageInputError

#: public name -> "module:attribute" (relative to this package)
_PUBLIC = {
    "load_ar_model": "ar.loading:load_ar_model",
    "prepare_inputs": "ar.chat_prompt:prepare_inputs",
    "generate_tokens": "ar.generation:generate_tokens",
    "extract_prior": "tokens.grids:extract_prior",
    "load_decoder": "dit.loading:load_decoder",
    "decode": "dit.sampling:decode_prior",
    "save_prior": "tokens.files:save_prior",
    "load_prior": "tokens.files:load_prior",
    "render_grid": "tokens.grid_preview:render_grid",
    "GridShape": "shapes:GridShape",
    "PriorTokens": "payloads:PriorTokens",
    "GeneratedTokens": "payloads:GeneratedTokens",
}

__all__ = ["GlmImageInputError", *_PUBLIC]


def __getattr__(name: str):
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'glmimage_core' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
