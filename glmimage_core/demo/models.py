"""Tiny, randomly initialised GLM-Image models built on the spot.

They exist so that the pack can be exercised end to end on a machine with no
weights and no network: the tests, the command line demo and the example
workflows in CI all use them. They are real transformers/diffusers classes
with the real layer layout, just a few kilobytes big, so every code path that
runs on the 16 GB checkpoints runs on them too.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

#: Codebook size of the tiny AR model (the real model has 16384).
TINY_CODEBOOK = 64

_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|dit_token_BOS|><|image|><|dit_token_EOS|>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endfor -%}"
)

_SPECIALS = ["[gMASK]", "<sop>", "<eop>", "<|user|>", "<|assistant|>", "<|image|>",
             "<|begin_of_image|>", "<|end_of_image|>", "<|pad|>", "<unk>"]


def _build_tokenizer(codebook: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    dit_tokens = [f"<|dit_token_{i}|>" for i in range(codebook + 2)]
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab: dict[str, int] = {}
    for tok in dit_tokens + chars + _SPECIALS:
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=f"<|dit_token_{codebook}|>",
        eos_token=f"<|dit_token_{codebook + 1}|>",
        pad_token="<|pad|>",
        unk_token="<unk>",
        additional_special_tokens=dit_tokens + _SPECIALS,
        extra_special_tokens={"image_token": "<|image|>", "grid_bos_token": "<sop>", "grid_eos_token": "<eop>"},
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_processor(codebook: int = TINY_CODEBOOK, max_side: int = 512):
    """A `GlmImageProcessor` whose vocabulary starts with `codebook + 2` image ids, as the real one does.

    The image processor has the real patching (16 px, merge 1); `max_side`
    bounds source images (512 px keeps tests fast; the real model takes 2048)."""
    from transformers import GlmImageProcessor
    from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

    tokenizer = _build_tokenizer(codebook)
    image_processor = GlmImageImageProcessorPil(
        patch_size=16, merge_size=1, temporal_patch_size=1,
        size={"shortest_edge": 64 * 64, "longest_edge": max_side * max_side},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    template = _CHAT_TEMPLATE.replace("BOS", str(codebook)).replace("EOS", str(codebook + 1))
    return GlmImageProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


def build_tiny_ar_model(out_dir: str | Path, seed: int = 0, codebook: int = TINY_CODEBOOK,
                        well_behaved: bool = True) -> Path:
    """Write a tiny `GlmImageForConditionalGeneration` + processor to `out_dir`.

    With `well_behaved` the lm_head rows of the two special ids are zeroed and
    the codebook rows scaled up, so that sampling practically never ends a grid
    early: random weights would otherwise emit EOS after a few dozen tokens and
    the demo could never show a full grid. Tests that need early EOS build a
    model with `well_behaved=False`.
    """
    from transformers import GenerationConfig, GlmImageConfig, GlmImageForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor(codebook)
    tokenizer = processor.tokenizer

    vision_hidden = 32
    config = GlmImageConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
            vision_vocab_size=codebook + 2, eos_token_id=codebook + 1,
            pad_token_id=tokenizer.pad_token_id,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                             "partial_rotary_factor": 0.5},
        ),
        vision_config=dict(depth=2, hidden_size=vision_hidden, num_heads=2, intermediate_size=64,
                           patch_size=16, image_size=256, spatial_merge_size=1),
        vq_config=dict(embed_dim=16, num_embeddings=codebook, latent_channels=vision_hidden),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image|>"),
        image_start_token_id=codebook,
        image_end_token_id=codebook + 1,
    )
    torch.manual_seed(seed)
    model = GlmImageForConditionalGeneration(config).eval()
    if well_behaved:
        with torch.no_grad():
            model.lm_head.weight[:codebook] *= 10.0
            model.lm_head.weight[codebook:] = 0.0
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=0.9, top_p=0.75, eos_token_id=codebook + 1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=codebook,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def build_tiny_hub_layout(root: str | Path, seed: int = 0, codebook: int = TINY_CODEBOOK) -> Path:
    """The hub's diffusers layout: `model_index.json` + `vision_language_encoder/` + `processor/`."""
    root = Path(root)
    tmp = build_tiny_ar_model(root / "_ar", seed=seed, codebook=codebook)
    (root / "vision_language_encoder").mkdir(parents=True, exist_ok=True)
    (root / "processor").mkdir(parents=True, exist_ok=True)
    for f in tmp.iterdir():
        is_model = f.name in ("config.json", "generation_config.json") or f.suffix == ".safetensors" \
            or f.name.endswith(".safetensors.index.json")
        f.rename(root / ("vision_language_encoder" if is_model else "processor") / f.name)
    tmp.rmdir()
    index = {"_class_name": "GlmImagePipeline", "_diffusers_version": "0.42.1",
             "vision_language_encoder": ["transformers", "GlmImageForConditionalGeneration"],
             "processor": ["transformers", "GlmImageProcessor"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
