"""The glyph encoder's input: the quoted text a picture should show, as ByT5 embeddings.

Both samplers of the pack read the glyph embeddings from here: the engine's
loop (dit/sampling.py) and the conditioning of ComfyUI's path
(glmimage_comfy/token_conditioning.py).
"""

from __future__ import annotations

import re

import torch

from ..memory.placement import ensure_on_device
from ..payloads import GlyphEncoder

#: ByT5 truncates each glyph text to this many bytes (diffusers' `max_sequence_length`).
MAX_GLYPH_BYTES = 2048


def get_glyph_texts(prompt: str) -> list[str]:
    """The text the picture should show: everything in '...', \u201c...\u201d, "..." or corner brackets
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
    ensure_on_device(glyph.text_encoder, glyph.device)
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
