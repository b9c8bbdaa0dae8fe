"""GLM-Image's published layer sizes, for models with random weights at the real size.

Benchmarks and the fp8 tests need the real matrix shapes (memory, speed and
fp8 rounding all depend on them) but no weights, which are 32 GB and never
downloaded here. The numbers are those of zai-org/GLM-Image's published
configs (see README, "Memory"): `vision_language_encoder/config.json` (AR model)
and `transformer/config.json` (DiT). `layers` / `vision_depth` cut the depth
so that a CPU can hold one or two layers; building on the `meta` device costs
no memory at all (for byte counts).
"""

from __future__ import annotations

import torch

#: transformer/config.json of zai-org/GLM-Image.
DIT_CONFIG = dict(patch_size=2, in_channels=16, out_channels=16, num_layers=30, attention_head_dim=128,
                  num_attention_heads=32, text_embed_dim=1472, time_embed_dim=512, condition_dim=256,
                  prior_vq_quantizer_codebook_size=16384)
CODEBOOK = 16384
IMAGE_START, IMAGE_END, IMAGE_TOKEN, PAD_TOKEN = 16384, 16385, 167855, 167841


TEXT_VOCAB = 168064


def ar_config(layers: int = 40, vision_depth: int = 40, vocab_size: int = TEXT_VOCAB):
    """`GlmImageConfig` with the published sizes (text: 4096 hidden, 13696 MLP, 32 heads / 2 KV heads,
    vocab 168064, image vocab 16512; vision: 1536 hidden, 16 heads, 6144 MLP, patch 16; VQ: 16384 x 2048).

    `vocab_size` can shrink the text embedding table (1.28 GiB, stays in bf16 in every option) where only
    the matrix layers matter, e.g. for the fp8 rounding tests on a CPU."""
    from transformers import GlmImageConfig

    return GlmImageConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=4096, intermediate_size=13696, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=2, max_position_embeddings=131072,
                         vision_vocab_size=16512, rms_norm_eps=1e-5, eos_token_id=IMAGE_END,
                         pad_token_id=min(PAD_TOKEN, vocab_size - 1),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [8, 12, 12], "partial_rotary_factor": 0.5}),
        vision_config=dict(depth=vision_depth, hidden_size=1536, num_heads=16, intermediate_size=6144,
                           patch_size=16, image_size=2048, attention_bias=True),
        vq_config=dict(embed_dim=2048, num_embeddings=CODEBOOK, latent_channels=1536),
        image_start_token_id=IMAGE_START, image_end_token_id=IMAGE_END, image_token_id=IMAGE_TOKEN)


def dit_config(layers: int = 30) -> dict:
    return {**DIT_CONFIG, "num_layers": layers}


def build_ar(layers: int = 40, vision_depth: int = 40, dtype: torch.dtype = torch.bfloat16,
             device: torch.device | str = "cpu", seed: int = 0, vocab_size: int = TEXT_VOCAB):
    """A random `GlmImageForConditionalGeneration` at the real sizes, built directly on `device`.

    The output head is biased towards codebook ids (as the tiny demo model is),
    so sampling fills grids instead of ending them early.
    """
    return _random_ar(ar_config(layers, vision_depth, vocab_size), dtype, device, seed)


def _random_ar(config, dtype: torch.dtype, device: torch.device | str, seed: int):
    """`config`'s model with random weights on `device`, its output head biased towards codebook ids."""
    from transformers import GlmImageForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = GlmImageForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    if torch.device(device).type != "meta":
        with torch.no_grad():
            model.lm_head.weight[CODEBOOK:] = 0
            model.lm_head.weight[:CODEBOOK] *= 10
    return model


def build_dit(layers: int = 30, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
              seed: int = 0):
    """A random `GlmImageTransformer2DModel` at the real sizes, built directly on `device`."""
    from diffusers import GlmImageTransformer2DModel

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in `dtype` directly: no fp32 copy of 12.9 GiB first
    try:
        with torch.device(device):
            model = GlmImageTransformer2DModel.from_config(dit_config(layers))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def build_ar_with_processor(layers: int = 40, vision_depth: int = 40, dtype: torch.dtype = torch.bfloat16,
                            device: torch.device | str = "cpu", seed: int = 0):
    """(model, processor): the real-size AR model and a processor whose image ids are the real ones.

    The processor's vocabulary is the demo one (16386 image ids, then characters
    and GLM-Image's special tokens), so prompts tokenise into ids the model has;
    the embedding table keeps the real 168064 rows.
    """
    from transformers import GenerationConfig

    from .models import build_processor

    processor = build_processor(CODEBOOK, max_side=2048)
    tokenizer = processor.tokenizer
    config = ar_config(layers, vision_depth)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    config.image_token_id = tokenizer.convert_tokens_to_ids("<|image|>")
    model = _random_ar(config, dtype, device, seed)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.9, top_p=0.75, eos_token_id=IMAGE_END,
                                               pad_token_id=tokenizer.pad_token_id, bos_token_id=IMAGE_START)
    return model, processor
