"""How much VRAM each model needs for each option, and the message that names an option that fits.

GLM-Image's AR model is 18.8 GiB in bf16 and its DiT 12.9 GiB; most ComfyUI
users have 8-24 GB. Every figure here is computed from the model's own module
tree (a loaded model, or one built on the `meta` device from a config, which
costs no memory), so the loader can say what its choice will hold on the GPU
and what the other choices would hold, before anything is loaded or runs out
of memory:

- `Inventory`: the model's parameter counts by kind (Linear weights that fp8 /
  int8 / nf4 can shrink, and everything else at its own dtype), plus the
  embedding bytes that stay in host RAM (`cast_layers.HostEmbedding`).
- `WeightOption` + `resident_bytes`: bytes on the device for dtype, weight_dtype
  and quantization choices.
- `ar_run_bytes` / `dit_step_bytes` / `vae_decode_bytes`: working memory of a
  run for a shape (KV cache, activations), the `memory_required` ComfyUI gets.
- `plan_message`: "AR bf16 needs ~19.5 GB at 1024x1024, 15.1 GB free: choose ...".

GB here means 2**30 bytes, the unit GPU makers' "24 GB" cards are sized in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from ..payloads import Inventory

GIB = 1 << 30
MIB = 1 << 20

#: bitsandbytes packs nf4 weights at half a byte plus one fp32 absmax per 64 weights; int8 one byte plus a
#: fp32 scale per row (counted per element as 1/64 of a float, an upper bound for GLM-Image's rows).
QUANT_BYTES = {"int8": 1.0 + 4 / 64, "nf4": 0.5 + 4 / 64}
FP8_BYTES = 1.0

#: Module name parts that bitsandbytes leaves unquantized in the AR model (ar_loading.quantization_config).
AR_QUANT_SKIP = ("lm_head", "visual", "vqmodel")
#: AR Linear layers that keep the model's dtype with weight_dtype fp8: the output head and the VQ codebook side.
AR_FP8_KEEP = ("lm_head", "vqmodel")
#: DiT Linear layers that keep the model's dtype with weight_dtype fp8: small, and on the path of every
#: token's conditioning (timestep/size embedding, final modulation and projection).
DIT_FP8_KEEP = ("time_condition_embed", "norm_out", "proj_out")
#: The AR model's text embedding table: read one row per token, kept in host RAM inside ComfyUI.
AR_HOST_EMBEDDINGS = ("model.language_model.embed_tokens",)


def name_matches(name: str, parts: Iterable[str]) -> bool:
    """Whether a dotted module name contains one of `parts` as a whole path component (or dotted run)."""
    dotted = f".{name}."
    return any(f".{part}." in dotted for part in parts)


def inventory(model: torch.nn.Module, classify: Callable[[str], str], dtype: torch.dtype,
              host: Iterable[str] = ()) -> Inventory:
    """Count `model`'s parameters and buffers; works on `meta` models (no memory needed).

    `classify(name)` gives each Linear layer's kind; Linear weights are priced
    later per option from `dtype` (the model's compute dtype, whatever they are
    stored in now), everything else at its own dtype; `host` names embeddings
    that stay in host RAM.
    """
    host = tuple(host)
    inv = Inventory(dtype_bytes=dtype.itemsize)
    seen: set[int] = set()
    for name, module in model.named_modules():
        if name and name_matches(name, host):
            weight = getattr(module, "weight", None)
            if weight is not None:
                inv.host_bytes += weight.numel() * weight.element_size()
            continue
        # Buffers that are not saved (rotary tables) are rebuilt per model and not counted by ComfyUI either.
        buffers = [(n, b) for n, b in module.named_buffers(recurse=False)
                   if n not in getattr(module, "_non_persistent_buffers_set", ())]
        tensors = list(module.named_parameters(recurse=False)) + buffers
        for pname, tensor in tensors:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if isinstance(module, torch.nn.Linear) and pname == "weight":
                kind = classify(name)
                inv.linear_numel[kind] = inv.linear_numel.get(kind, 0) + tensor.numel()
            else:
                inv.other_bytes += tensor.numel() * tensor.element_size()
    return inv


def classify_ar(name: str) -> str:
    """Kinds of the AR model's Linear layers: text (quantizable), visual, head/VQ (kept)."""
    if name_matches(name, AR_FP8_KEEP):
        return "kept"
    if name_matches(name, ("visual",)):
        return "visual"
    return "text"


def classify_dit(name: str) -> str:
    return "kept" if name_matches(name, DIT_FP8_KEEP) else "blocks"


@dataclass(frozen=True)
class WeightOption:
    """A loader choice: weight_dtype (default/fp8_*) or quantization (none/int8/nf4)."""

    weight_dtype: str = "default"
    quantization: str = "none"

    def label(self, dtype_name: str) -> str:
        if self.quantization != "none":
            return f"quantization {self.quantization}"
        if self.weight_dtype != "default":
            return f"weight_dtype {self.weight_dtype}"
        return dtype_name


def resident_bytes(inv: Inventory, option: WeightOption, fp8_kinds: Iterable[str] = ("text", "visual", "blocks"),
                   quant_kinds: Iterable[str] = ("text",)) -> int:
    """Bytes the model holds on its device with `option` (host-RAM embeddings excluded)."""
    fp8_kinds, quant_kinds = set(fp8_kinds), set(quant_kinds)
    total = inv.other_bytes
    for kind, numel in inv.linear_numel.items():
        if option.quantization != "none" and kind in quant_kinds:
            per = QUANT_BYTES[option.quantization]
        elif option.weight_dtype != "default" and kind in fp8_kinds:
            per = FP8_BYTES
        else:
            per = inv.dtype_bytes
        total += int(math.ceil(numel * per))
    return total


# --------------------------------------------------------------------------- working memory of a run


def ar_run_bytes(text_config, vision_config, prompt_tokens: int, new_tokens: int, batch: int = 1,
                 source_patches: int = 0, act_bytes: int = 2) -> int:
    """KV cache + the largest activation block of one AR run (prefill or a vision pass), + logits.

    KV: 2 x layers x kv_heads x head_dim per token of prompt + sampled tokens.
    Prefill: the MLP's gate/up projection output is the biggest tensor (2 x
    intermediate per prompt token), with the hidden state in and out. The vision
    tower (image-to-image) runs once over the source patches before that.
    """
    layers = text_config.num_hidden_layers
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    total = prompt_tokens + new_tokens
    kv = 2 * layers * kv_heads * head_dim * total * batch * act_bytes
    prefill = prompt_tokens * batch * (3 * text_config.intermediate_size + 4 * text_config.hidden_size) * act_bytes
    vision = 0
    if source_patches:
        vision = source_patches * (2 * vision_config.intermediate_size + 6 * vision_config.hidden_size) * act_bytes
    logits = batch * text_config.vision_vocab_size * 4 * 3  # fp32 scores, warped copy, probabilities
    return kv + max(prefill, vision) + logits


def dit_step_bytes(dit_config, latent_h: int, latent_w: int, rows: int, text_tokens: int = 64,
                   source_tokens: int = 0, act_bytes: int = 2) -> int:
    """Peak activations of one DiT forward over `rows` rows (2 per picture with guidance in one batch).

    Per token: the feed-forward's inner tensor (4 x hidden, plus its GELU copy),
    q/k/v/out and the residual stream; attention itself is SDPA (no L x L matrix).
    Image-to-image adds the source images' keys/values of every layer (the KV cache).
    """
    hidden = dit_config.num_attention_heads * dit_config.attention_head_dim
    tokens = (latent_h // dit_config.patch_size) * (latent_w // dit_config.patch_size) + text_tokens
    per_token = (2 * 4 * hidden + 6 * hidden) * act_bytes
    kv_cache = 2 * dit_config.num_layers * source_tokens * hidden * act_bytes
    return rows * (tokens + source_tokens) * per_token + kv_cache


def vae_decode_bytes(vae_config, latent_h: int, latent_w: int, act_bytes: int = 2) -> int:
    """Peak memory of an untiled VAE decode of one picture: a few full-resolution feature maps of the widest
    up-block (the same order as ComfyUI's own estimate for KL VAEs, scaled by GLM-Image's channel widths)."""
    widest_full_res = vae_config.block_out_channels[0]
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    pixels = latent_h * scale * latent_w * scale
    return int(pixels * widest_full_res * act_bytes * 6)


# --------------------------------------------------------------------------- what fits


def gb(n: float) -> str:
    """Bytes for people: '17.6 GB', '512 MB', '37 KB' (units of 1024)."""
    if n >= GIB:
        return f"{n / GIB:.1f} GB"
    if n >= MIB:
        return f"{n / MIB:.0f} MB"
    return f"{n / 1024:.0f} KB"


@dataclass(frozen=True)
class Need:
    """What one option of one model needs on the device for one run."""

    option: WeightOption
    label: str
    weights: int
    working: int

    @property
    def total(self) -> int:
        return self.weights + self.working


def largest_layer_bytes(module: torch.nn.Module) -> int:
    """The biggest single weight-holding leaf: what streaming must hold on the device at once."""
    best = 0
    for sub in module.modules():
        own = sum(p.numel() * p.element_size() for p in sub.parameters(recurse=False))
        best = max(best, own)
    return best


def streaming_message(model_name: str, largest_layer: int, working: int, free: int, shape: str) -> str | None:
    """None when streaming can run; else why not even streaming fits, and what would help."""
    need = largest_layer + working
    if need <= free:
        return None
    return (f"{model_name} cannot run even with its layers streamed at {shape}: one layer ({gb(largest_layer)}) "
            f"plus working memory ({gb(working)}) need ~{gb(need)}, {gb(free)} free: use a smaller picture, "
            "fewer pictures at once, weight_dtype fp8_e4m3fn, or free VRAM (close other programs)")


def plan_message(model_name: str, chosen: Need, free: int, alternatives: list[Need], shape: str,
                 streaming: str) -> str:
    """The sentence a user reads when `chosen` does not fit in `free` bytes: which option would."""
    head = (f"{model_name} {chosen.label} needs ~{gb(chosen.total)} at {shape} "
            f"({gb(chosen.weights)} weights + {gb(chosen.working)} working memory), {gb(free)} free")
    fitting = [a for a in alternatives if a.total <= free and a.option != chosen.option]
    if fitting:
        options = " or ".join(f"{a.label} (~{gb(a.total)})" for a in fitting)
        return f"{head}: choose {options}, or {streaming}"
    smallest = min(alternatives, key=lambda a: a.total) if alternatives else chosen
    return (f"{head}; even {smallest.label} needs ~{gb(smallest.total)}: free VRAM (close other programs, "
            f"unload other models), use a smaller picture, or {streaming}")


# --------------------------------------------------------------------------- per model

AR_OPTIONS = [WeightOption(), WeightOption("fp8_e4m3fn"), WeightOption(quantization="int8"),
              WeightOption(quantization="nf4")]
DIT_OPTIONS = [WeightOption(), WeightOption("fp8_e4m3fn")]


def dtype_label(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def weight_needs(inv: Inventory, options: list[WeightOption], dtype: torch.dtype, working: int,
                 host_on_device: bool = False) -> list[Need]:
    """One `Need` per option: the option's resident weights plus the run's working memory."""
    extra = inv.host_bytes if host_on_device else 0
    return [Need(o, o.label(dtype_label(dtype)), resident_bytes(inv, o) + extra, working) for o in options]


def describe_weights(model_name: str, inv: Inventory, chosen: WeightOption, options: list[WeightOption],
                     dtype: torch.dtype, host_on_device: bool = False) -> str:
    """What a loader reports: the bytes its model holds on the device, and what the other options would hold."""
    needs = weight_needs(inv, options, dtype, 0, host_on_device)
    mine = next(n for n in needs if n.option == chosen)
    text = f"{model_name} {mine.label}: {gb(mine.weights)} on the GPU"
    if inv.host_bytes and not host_on_device:
        text += f" (+{gb(inv.host_bytes)} text embedding table kept in RAM)"
    others = [f"{n.label} {gb(n.weights)}" for n in needs if n.option != chosen]
    if others:
        text += "; other options: " + ", ".join(others)
    return text
