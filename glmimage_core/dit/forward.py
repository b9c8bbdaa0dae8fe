"""The one place GLM-Image's DiT is called, for a batch whose rows differ.

diffusers' `GlmImageTransformer2DModel` is the model; this module decides what a
row of a batch sees, so that the guided and the unguided branch (and several
pictures) can run in ONE forward, which is both what ComfyUI's samplers do
(they batch the positive and the negative conditioning when memory allows)
and the faster path of the pack's own loop:

- glyph texts of different lengths (the prompt's quoted text vs the empty text
  of the unguided branch) are padded to one length and masked as keys;
- prior tokens are kept or dropped per row (the unguided branch drops them);
- image-to-image source images are run through the DiT once (`build_source_kv`)
  and their per-layer keys/values are read by the rows that want them and
  masked out for the others (diffusers can only read or skip them for a whole
  batch).

All of that lives in `RowAttnProcessor`, a drop-in for diffusers'
`GlmImageAttnProcessor` (the DiT's designated extension point): with no padding
and no source images it runs exactly diffusers' processor's operations.
"""

from __future__ import annotations

import torch



class LayerSourceKV:
    """One layer's keys/values of the source images, and which rows read them during a step."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mode: str | None = None  # "write" while building, "read" while denoising
        self.rows: torch.Tensor | None = None  # [B] bool: rows that read (None: all of them)

    def store(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys.append(key)
        self.values.append(value)

    def cached(self) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.keys) > 1:  # several source images: one sequence, as diffusers concatenates them
            self.keys, self.values = [torch.cat(self.keys, dim=1)], [torch.cat(self.values, dim=1)]
        return self.keys[0], self.values[0]


class SourceKV:
    """Every layer's source keys/values (indexable by layer, as the DiT indexes its `kv_caches`)."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerSourceKV() for _ in range(num_layers)]

    def __getitem__(self, index: int) -> LayerSourceKV:
        return self.layers[index]

    def set_mode(self, mode: str | None, rows: torch.Tensor | None = None) -> None:
        for layer in self.layers:
            layer.mode, layer.rows = mode, rows

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.keys + layer.values)


class RowAttnProcessor:
    """diffusers' GlmImageAttnProcessor, with per-row key masks (glyph padding, source images read or not)."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None,
                 kv_cache: LayerSourceKV | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb

        dtype = encoder_hidden_states.dtype
        batch_size, text_seq_length, _ = encoder_hidden_states.shape
        image_seq_length = hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)

        query = attn.to_q(hidden_states).unflatten(2, (attn.heads, -1))
        key = attn.to_k(hidden_states).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if attn.norm_q is not None:
            query = attn.norm_q(query).to(dtype=dtype)
        if attn.norm_k is not None:
            key = attn.norm_k(key).to(dtype=dtype)
        if image_rotary_emb is not None:
            query[:, text_seq_length:, :, :] = apply_rotary_emb(
                query[:, text_seq_length:, :, :], image_rotary_emb, sequence_dim=1, use_real_unbind_dim=-2)
            key[:, text_seq_length:, :, :] = apply_rotary_emb(
                key[:, text_seq_length:, :, :], image_rotary_emb, sequence_dim=1, use_real_unbind_dim=-2)

        # Keys a row may attend to: [B, keys] (True = attend), or None when every row sees every key.
        key_mask = None
        if attention_mask is not None:  # [B, text] valid glyph tokens
            image_keys = torch.ones(batch_size, image_seq_length, dtype=torch.bool, device=query.device)
            key_mask = torch.cat([attention_mask.to(query.device, torch.bool), image_keys], dim=1)
        if kv_cache is not None and kv_cache.mode == "write":
            kv_cache.store(key, value)
        elif kv_cache is not None and kv_cache.mode == "read":
            cached_key, cached_value = kv_cache.cached()
            key = torch.cat([cached_key.expand(batch_size, -1, -1, -1), key], dim=1)
            value = torch.cat([cached_value.expand(batch_size, -1, -1, -1), value], dim=1)
            if kv_cache.rows is not None or key_mask is not None:
                rows = kv_cache.rows if kv_cache.rows is not None else \
                    torch.ones(batch_size, dtype=torch.bool, device=query.device)
                cached_keys = rows.to(query.device, torch.bool)[:, None].expand(batch_size, cached_key.shape[1])
                own_keys = key_mask if key_mask is not None else \
                    torch.ones(batch_size, key.shape[1] - cached_key.shape[1], dtype=torch.bool, device=query.device)
                key_mask = torch.cat([cached_keys, own_keys], dim=1)

        hidden_states = dispatch_attention_fn(
            query, key, value, attn_mask=None if key_mask is None else key_mask[:, None, None, :],
            dropout_p=0.0, is_causal=False, backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


def install_row_attention(transformer: torch.nn.Module) -> None:
    """Give every attention layer of the DiT the row-aware processor (once; diffusers' `set_processor`)."""
    processor = None
    for module in transformer.modules():
        if hasattr(module, "set_processor") and not isinstance(getattr(module, "processor", None), RowAttnProcessor):
            processor = processor or RowAttnProcessor()
            module.set_processor(processor)


def pad_glyphs(embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, L_i, D] glyph embeddings -> ([N, max L, D] zero padded, [N] lengths)."""
    longest = max(e.shape[1] for e in embeds)
    padded = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, longest - e.shape[1])) for e in embeds])
    lengths = torch.tensor([e.shape[1] for e in embeds], device=padded.device)
    return padded, lengths


def glyph_mask(glyphs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] valid-token mask, or None when no row is padded (then no mask is built at all)."""
    if lengths is None:
        return None
    lengths = lengths.reshape(-1).to(glyphs.device)
    if bool((lengths >= glyphs.shape[1]).all()):
        return None
    return torch.arange(glyphs.shape[1], device=glyphs.device)[None, :] < lengths[:, None]


def velocity(transformer: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, glyphs: torch.Tensor,
             prior_ids: torch.Tensor, prior_drop: torch.Tensor, pixel_scale: int,
             glyph_lengths: torch.Tensor | None = None, source_kv: SourceKV | None = None,
             read_sources: torch.Tensor | None = None, rotary=None) -> torch.Tensor:
    """The DiT's flow prediction for a batch of rows: [B, C, h, w].

    latents: model-space latents in the DiT's dtype; timestep: [B] what the DiT
    was trained on (the unshifted timestep minus one); glyphs: [B, L, D] padded
    glyph embeddings with `glyph_lengths` [B]; prior_ids: [B, S] d16 ids;
    prior_drop: [B] rows whose prior tokens are dropped (unguided branch);
    read_sources: [B] rows that read `source_kv` (None: all rows, when there is one).
    """
    batch, _, height, width = latents.shape
    device = latents.device
    install_row_attention(transformer)
    drop = prior_drop.reshape(batch, 1).to(device=device, dtype=torch.bool).expand(batch, prior_ids.shape[1])
    target_size = torch.tensor([[height * pixel_scale, width * pixel_scale]], dtype=latents.dtype,
                               device=device).repeat(batch, 1)
    crop_coords = torch.zeros((batch, 2), dtype=latents.dtype, device=device)
    kv = None
    if source_kv is not None:
        rows = None if read_sources is None else read_sources.reshape(batch).to(device=device, dtype=torch.bool)
        if rows is None or bool(rows.any()):
            source_kv.set_mode("read", None if rows is None or bool(rows.all()) else rows)
            kv = source_kv
    try:
        return transformer(hidden_states=latents, encoder_hidden_states=glyphs, prior_token_id=prior_ids.to(device),
                           prior_token_drop=drop, timestep=timestep, target_size=target_size,
                           crop_coords=crop_coords, attention_mask=glyph_mask(glyphs, glyph_lengths),
                           kv_caches=kv, image_rotary_emb=rotary, return_dict=False)[0]
    finally:
        if kv is not None:
            kv.set_mode(None)


def build_source_kv(transformer: torch.nn.Module, source_latents: list[torch.Tensor],
                    source_ids: list[torch.Tensor], pixel_scale: int) -> SourceKV:
    """Run each source image once through the DiT (timestep 0, no glyphs) and keep every layer's keys/values.

    `source_latents`: model-space [1, C, h, w] latents in the DiT's dtype; `source_ids`: [1, S] d16 ids.
    The denoising passes then read them (guided rows) or not (unguided rows).
    """
    install_row_attention(transformer)
    kv = SourceKV(transformer.config.num_layers)
    kv.set_mode("write")
    for latent, ids in zip(source_latents, source_ids):
        device, dtype = latent.device, latent.dtype
        transformer(hidden_states=latent,
                    encoder_hidden_states=torch.zeros((1, 0, transformer.config.text_embed_dim), device=device,
                                                      dtype=dtype),
                    prior_token_id=ids.to(device), prior_token_drop=torch.zeros_like(ids, dtype=torch.bool,
                                                                                       device=device),
                    timestep=torch.zeros((1,), device=device),
                    target_size=torch.tensor([[latent.shape[-2] * pixel_scale, latent.shape[-1] * pixel_scale]],
                                             device=device),
                    crop_coords=torch.zeros((1, 2), device=device), kv_caches=kv)
    kv.set_mode(None)
    return kv
