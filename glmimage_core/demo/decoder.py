"""A tiny, randomly initialised GLM-Image diffusion decoder built on the spot.

Same classes and folder layout as zai-org/GLM-Image's decoder half, a few
hundred kilobytes big, so the decode path, the loader and the hub-layout
handling run in tests and CI with no weights and no network. Together with
`demo_models.build_tiny_ar_model` it makes a complete hub-layout folder that
diffusers' own `GlmImagePipeline.from_pretrained` accepts, which is what the
tests compare against.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from .models import TINY_CODEBOOK, build_tiny_hub_layout

#: The scheduler settings of GLM-Image as far as `GlmImagePipeline` reads them:
#: dynamic (resolution dependent) shifting with mu = sqrt(seq_len / 256) * 0.75 + 0.25
#: and CogView4's linear time shift. The pipeline passes its own timesteps and
#: sigmas, so only the shifting keys matter.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.25,
    max_shift=0.75,
    base_image_seq_len=256,
    max_image_seq_len=4096,
    time_shift_type="linear",
    invert_sigmas=False,
    shift_terminal=None,
)

#: What `model_index.json` lists for each component, as the hub's file does.
MODEL_INDEX = {
    "_class_name": "GlmImagePipeline",
    "_diffusers_version": "0.42.1",
    "processor": ["transformers", "GlmImageProcessor"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "ByT5Tokenizer"],
    "transformer": ["diffusers", "GlmImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "vision_language_encoder": ["transformers", "GlmImageForConditionalGeneration"],
}
_DECODER_KEYS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")

#: GLM-Image's latent channels (the DiT's in/out channels, the VAE's latent_channels).
LATENT_CHANNELS = 16
#: Per-channel latent statistics for the test and benchmark VAEs. GLM-Image's published
#: vae/config.json (its latents_mean / latents_std) could not be read offline here, and
#: the FLUX.1 / CogView4 16-channel VAE's values are another VAE's. So these are
#: realistic stand-ins, NOT the published values: means of order +-0.5..1 and stds of
#: 0.5..2.5, every channel different, so that a latent normalisation that multiplies
#: by std instead of dividing, adds the mean instead of subtracting it, or mixes up
#: channels changes the numbers the tests compare (all-0 / all-1 statistics hide
#: every one of those mistakes).
LATENTS_MEAN = (-0.62, 0.91, 0.57, -0.84, 0.55, -0.69, 0.73, -0.47,
                0.98, -0.95, 0.66, -0.53, 0.82, -0.71, 0.44, -0.58)
LATENTS_STD = (1.84, 0.62, 2.31, 1.07, 0.55, 1.63, 0.94, 2.12,
               1.38, 0.71, 1.95, 1.16, 0.83, 2.47, 1.29, 0.68)


def build_tiny_decoder(out_dir: str | Path, codebook: int = TINY_CODEBOOK, seed: int = 0,
                       patch_size: int = 2, attention_head_dim: int = 8) -> Path:
    """Write `transformer/ vae/ text_encoder/ tokenizer/ scheduler/` + `model_index.json` to `out_dir`.

    patch_size x vae_scale_factor (8) must be 16 for GLM-Image tokens to line
    up with DiT patches; `patch_size` is a parameter only so that tests can
    build a decoder that violates it. `attention_head_dim` 32 makes a DiT whose matrices are big enough to be
    quantized (the GGUF tests); the default 8 keeps the usual tiny one.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImageTransformer2DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(vocab_size=384, d_model=32, d_ff=64, num_layers=2, num_heads=2,
                                           d_kv=16, decoder_start_token_id=0)).eval()
    transformer = GlmImageTransformer2DModel(
        patch_size=patch_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=2,
        attention_head_dim=attention_head_dim, num_attention_heads=2, text_embed_dim=text_encoder.config.d_model, time_embed_dim=16,
        condition_dim=8,
        prior_vq_quantizer_codebook_size=codebook,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(4, 8, 16, 16),
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=4, sample_size=128,
        latents_mean=list(LATENTS_MEAN), latents_std=list(LATENTS_STD),
    )
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    ByT5Tokenizer().save_pretrained(out / "tokenizer")
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(out / "scheduler")
    _write_model_index(out)
    return out


def _write_model_index(root: Path) -> None:
    """Add the decoder entries to `model_index.json`, keeping AR entries already there."""
    index_file = root / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    index.setdefault("_class_name", MODEL_INDEX["_class_name"])
    index.setdefault("_diffusers_version", MODEL_INDEX["_diffusers_version"])
    for key in _DECODER_KEYS:
        index[key] = MODEL_INDEX[key]
    index_file.write_text(json.dumps(dict(sorted(index.items())), indent=2))


def build_tiny_full_hub_layout(root: str | Path, seed: int = 0, codebook: int = TINY_CODEBOOK,
                               attention_head_dim: int = 8) -> Path:
    """AR model (`vision_language_encoder/`, `processor/`) + decoder in one hub-layout folder.

    The result loads with `GlmImagePipeline.from_pretrained(root)` as the real
    zai-org/GLM-Image folder does.
    """
    root = build_tiny_hub_layout(root, seed=seed, codebook=codebook)
    build_tiny_decoder(root, codebook=codebook, seed=seed, attention_head_dim=attention_head_dim)
    return root


def random_lora(transformer: str | Path | torch.nn.Module,
                layers: Sequence[str] = ("transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2"),
                rank: int = 4, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A LoRA with random weights (times `scale`) for a DiT, the tiny one the tests build: given as its saved
    `transformer/` folder or as the loaded module. In diffusers/PEFT names without the 'transformer.' prefix:
    `<layer>.lora_A.weight` [rank, in] and `<layer>.lora_B.weight` [out, rank] for each of `layers`; the LoRA
    tests write it in the layout they test."""
    if isinstance(transformer, torch.nn.Module):
        shapes = {name: transformer.get_submodule(name).weight.shape for name in layers}
    else:
        from safetensors.torch import load_file

        weights = load_file(str(Path(transformer) / "diffusion_pytorch_model.safetensors"))
        shapes = {name: weights[f"{name}.weight"].shape for name in layers}
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for name in layers:
        out_features, in_features = shapes[name]
        lora[f"{name}.lora_A.weight"] = torch.randn(rank, in_features, generator=g) * scale
        lora[f"{name}.lora_B.weight"] = torch.randn(out_features, rank, generator=g) * scale
    return lora
