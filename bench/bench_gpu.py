"""A 1024x1024 text-to-image picture on one GPU, every variant side by side in one run.

    .venv/bin/python bench/bench_gpu.py            # GLM-Image's real sizes, random weights, on the GPU
    .venv/bin/python bench/bench_gpu.py --tiny     # tiny models on the CPU: the same code, so it cannot rot

AR stage (GlmImageForConditionalGeneration, 40 layers, bf16, built in place on the device):
  raw generate     the upstream usage: chat template with the target size, manual_seed, model.generate
  pack standard    glmimage_core.ar.generation.generate_tokens (what the node runs)
  pack compiled    speed=compiled (static KV cache + torch.compile, CUDA graphs); first run compiles
                   (reported), the second one is timed
  batch 4          images=4 in one batched generate (images/s against batch 1)
Decoder (GlmImageTransformer2DModel 30 layers + a 16-channel AutoencoderKL + a ByT5-sized T5, bf16):
  diffusers        GlmImagePipeline(prior_token_ids=...): guided and unguided passes one after the other
  pack sequential  decode_prior(guidance_batching="sequential"): the same, through the pack's DiT forward
  pack batched     decode_prior(guidance_batching="batched"): both passes in one forward
  VAE decode       the 1024x1024 picture from its latents
End to end: the faster AR path + the batched decode, seconds per picture (measured in this run).

The weights are random (nothing is downloaded); the output head is biased towards codebook ids so grids
fill up. Prints a table with the issue's goals and writes bench/results/gpu.json. Absolute figures are
only meaningful from a GPU; CPU (--tiny) runs only prove the script works.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from common import (REPO, Measured, StepClock, gib, machine, quiet_libraries, raw_generate,  # noqa: E402
                    timed)

from glmimage_core.demo import real_size  # noqa: E402
from glmimage_core.ar.loading import load_ar_model, prepare_ar_model  # noqa: E402
from glmimage_core.dit.loading import load_decoder, prepare_dit  # noqa: E402
from glmimage_core.dit.sampling import decode_latents, decode_prior  # noqa: E402
from glmimage_core.demo.decoder import (LATENTS_MEAN, LATENTS_STD, SCHEDULER_CONFIG,  # noqa: E402
                                        build_tiny_full_hub_layout)
from glmimage_core.tokens.grids import extract_prior  # noqa: E402
from glmimage_core.ar.generation import generate_tokens  # noqa: E402
from glmimage_core.payloads import DecoderBundle, GlyphEncoder, VAEModel  # noqa: E402
from glmimage_core.ar.chat_prompt import prepare_inputs  # noqa: E402
from glmimage_core.shapes import GridShape  # noqa: E402

PROMPT = 'A street cafe at night, a neon sign that says "GLM"'
AR_LAYERS = 40  # GLM-Image's AR decoder depth; --ar-layers cuts it so that a timed device call fits
VAE_16 = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, latents_mean=list(LATENTS_MEAN),
              latents_std=list(LATENTS_STD))  # realistic stand-ins, see demo_decoder
BYT5 = dict(vocab_size=384, d_model=1472, d_ff=3584, num_layers=12, num_heads=6, d_kv=64,
            feed_forward_proj="gated-gelu", decoder_start_token_id=0)


def build(tiny: bool, device: torch.device, dtype: torch.dtype, tmp: Path, ar_layers: int = AR_LAYERS):
    """(ARModel, DecoderBundle, GlmImagePipeline) sharing one set of modules."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, GlmImagePipeline
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    if tiny:
        root = build_tiny_full_hub_layout(tmp / "tiny")
        ar = load_ar_model(str(root), dtype="fp32", device=str(device.type))
        bundle = load_decoder(str(root), dtype="fp32", device=str(device.type))
    else:
        model, processor = real_size.build_ar_with_processor(layers=ar_layers, dtype=dtype, device=device)
        ar = prepare_ar_model(model, processor, "random weights, real sizes", dtype, device)
        dit = real_size.build_dit(dtype=dtype, device=device)
        with torch.device(device):
            vae = AutoencoderKL(**VAE_16).to(dtype).eval()
            text_encoder = T5EncoderModel(T5Config(**BYT5)).to(dtype).eval()
        scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
        bundle = DecoderBundle(
            dit=prepare_dit(dit, "random DiT", dtype, device, dict(SCHEDULER_CONFIG), vae.config),
            vae_model=VAEModel(vae=vae, path="random VAE", dtype=dtype, device=device),
            glyph=GlyphEncoder(text_encoder=text_encoder, tokenizer=ByT5Tokenizer(), path="random T5",
                               dtype=dtype, device=device),
            scheduler=scheduler, path="random decoder")
    pipe = GlmImagePipeline(tokenizer=bundle.tokenizer, processor=ar.processor, text_encoder=bundle.text_encoder,
                            vision_language_encoder=ar.model, vae=bundle.vae, transformer=bundle.transformer,
                            scheduler=bundle.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return ar, bundle, pipe


def ar_stage(ar, shape: GridShape, device: torch.device, compile_config) -> dict:
    inputs = prepare_inputs(ar.processor, PROMPT, shape)
    tokens = shape.max_new_tokens("t2i")
    rows: dict[str, dict] = {}

    def row(name: str, m: Measured, images: int = 1, **extra) -> None:
        rows[name] = {"seconds": m.seconds, "tokens_per_s": tokens * images / m.seconds,
                      "images_per_s": images / m.seconds, "peak_vram_bytes": m.peak_vram, **extra}

    raw_generate(ar, PROMPT, GridShape(2, 2), 0)  # warm-up: kernels, allocator
    row("raw generate", timed(lambda: raw_generate(ar, PROMPT, shape, 0), device))
    standard = timed(lambda: generate_tokens(ar, inputs, seed=0), device)
    row("pack standard", standard)
    first = timed(lambda: generate_tokens(ar, inputs, seed=0, speed="compiled", compile_config=compile_config),
                  device)
    second = timed(lambda: generate_tokens(ar, inputs, seed=1, speed="compiled", compile_config=compile_config),
                   device)
    row("pack compiled", second, notes=first.value.notes + second.value.notes, first_run_seconds=first.seconds)
    batch = timed(lambda: generate_tokens(ar, inputs, seed=0, images=4), device)
    row("batch 4", batch, images=4)
    rows["_prior"] = extract_prior(standard.value)
    return rows


def decoder_stage(bundle, pipe, prior, steps: int, device: torch.device) -> dict:
    rows: dict[str, dict] = {}
    clock = StepClock()

    def on_step(pipeline, step, timestep, kwargs):
        clock.update()
        return {}

    def diffusers_run():
        return pipe(prompt=[prior.prompt], prior_token_ids=prior.d16().to(device), height=prior.height,
                    width=prior.width, num_inference_steps=steps, guidance_scale=1.5,
                    generator=torch.Generator().manual_seed(0), output_type="pt", callback_on_step_end=on_step)

    with torch.inference_mode():
        diffusers_run()  # warm-up
        clock.stamps.clear()
        m = timed(diffusers_run, device)
    rows["diffusers"] = {"seconds": m.seconds, "s_per_step": clock.seconds_per_step(), "peak_vram_bytes": m.peak_vram}
    for mode in ("sequential", "batched"):
        clock = StepClock()
        m = timed(lambda: decode_prior(bundle, prior, steps=steps, guidance=1.5, seed=0, progress=clock,
                                       guidance_batching=mode), device)
        rows[f"pack {mode}"] = {"seconds": m.seconds, "s_per_step": clock.seconds_per_step(),
                                "peak_vram_bytes": m.peak_vram}
    latents = torch.randn(1, bundle.dit.latent_channels, prior.height // 8, prior.width // 8, device=device,
                          dtype=bundle.dit.dtype)
    with torch.inference_mode():
        m = timed(lambda: decode_latents(bundle.vae_model, latents, tiled=False), device)
    rows["VAE decode"] = {"seconds": m.seconds, "peak_vram_bytes": m.peak_vram}
    return rows


def goals(ar_rows: dict, dec_rows: dict, e2e: float, real: bool, ar_layers: int = AR_LAYERS,
          steps: int = 50) -> list[tuple[str, str, bool]]:
    """The issue's goals, (goal, measured, met). With the AR model cut to `ar_layers` or fewer than 50 decoder
    steps, the absolute ones (tokens/s, end to end) are scaled to the full model and say so: an estimate."""
    compiled = ar_rows["pack compiled"]["tokens_per_s"] / ar_rows["raw generate"]["tokens_per_s"]
    batch = ar_rows["batch 4"]["images_per_s"] / ar_rows["pack standard"]["images_per_s"]
    batched = dec_rows["pack sequential"]["s_per_step"] / dec_rows["pack batched"]["s_per_step"]
    vs_diffusers = dec_rows["pack batched"]["seconds"] / dec_rows["diffusers"]["seconds"]
    out = [("AR compiled tokens/s vs raw generate", f"{compiled:.2f}x (goal >= 2.5x)", compiled >= 2.5),
           ("AR batch 4 images/s vs batch 1", f"{batch:.2f}x (goal >= 3x)", batch >= 3.0),
           ("DiT batched guidance steps/s vs sequential", f"{batched:.2f}x (goal >= 1.3x)", batched >= 1.3),
           ("pack decode time vs diffusers", f"{vs_diffusers:.2f}x (goal <= 1.05x)", vs_diffusers <= 1.05)]
    if real:
        scaled = ar_layers != AR_LAYERS or steps != 50
        note = f" (scaled from {ar_layers}/{AR_LAYERS} AR layers, {steps}/50 steps: an estimate)" if scaled else ""
        tps = ar_rows["pack compiled"]["tokens_per_s"] * ar_layers / AR_LAYERS
        out.append(("AR compiled tokens/s at 1024x1024", f"{tps:.0f} tokens/s (aim >= 100){note}", tps >= 100))
        out.append(("end to end, s per 1024x1024 picture", f"{e2e:.1f} s (goal <= 25 s){note}", e2e <= 25.0))
    return out


def report(results: dict) -> str:
    """The markdown tables (AR variants, decoder variants, goals) of one run's results."""
    ar_rows, dec_rows, info = results["ar"], results["decoder"], results["machine"]
    lines = [f"{info['gpu'] or info['cpu']} | torch {info['torch']} | {results['shape']} | {results['steps']} steps"
             + (f" | AR {results['ar_layers']} of {AR_LAYERS} layers" if results.get("ar_layers") else "")
             + (" | TINY MODELS ON THE CPU (dry run): only proves the script runs" if results["tiny"] else ""),
             "", "| AR variant | s per picture | tokens/s | images/s | peak VRAM GiB |", "|---|---|---|---|---|"]
    for name, r in ar_rows.items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {r['images_per_s']:.3f} | "
                     f"{gib(r['peak_vram_bytes'])} |")
    lines += ["", "| decoder variant | s total | s/step | peak VRAM GiB |", "|---|---|---|---|"]
    for name, r in dec_rows.items():
        step = r.get("s_per_step")
        lines.append(f"| {name} | {r['seconds']:.2f} | {'-' if step is None else f'{step:.3f}'} | "
                     f"{gib(r['peak_vram_bytes'])} |")
    lines += ["", f"end to end: {results['end_to_end_seconds']:.2f} s per picture (faster AR path + batched decode"
              + (", scaled to the full model)" if results.get("scaled") else ")"),
              "", "| goal | measured | met |", "|---|---|---|"]
    for g in results["goals"]:
        lines.append(f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else 'NO'} |")
    notes = ar_rows["pack compiled"].get("notes")
    if notes:
        lines += ["", "compiled path: " + " ".join(notes)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a smoke run)")
    parser.add_argument("--size", type=int, default=1024, help="picture side in px (default 1024)")
    parser.add_argument("--steps", type=int, default=50, help="decoder steps (default 50)")
    parser.add_argument("--ar-layers", type=int, default=AR_LAYERS,
                        help=f"AR decoder layers (default {AR_LAYERS}, the real model; fewer to fit a time budget: "
                             "ratios stay comparable, absolute figures are scaled and marked)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu.json"))
    parser.add_argument("--md", help="also write the tables as markdown to this file")
    args = parser.parse_args()
    quiet_libraries()
    device = torch.device("cpu") if args.tiny or not torch.cuda.is_available() else torch.device("cuda")
    real = not args.tiny
    if real and device.type != "cuda":
        raise SystemExit("bench_gpu.py needs a CUDA GPU for the real sizes; run it with --tiny on a CPU")
    shape = GridShape.from_pixels(args.size, args.size) if real else GridShape(4, 4)
    steps = args.steps if real else 2
    compile_config = None
    if device.type != "cuda":  # the compiled path, traced whole on the CPU (eager backend), so it cannot rot
        from transformers import CompileConfig

        compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="eager", mode=None)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        ar, bundle, pipe = build(args.tiny, device, torch.bfloat16, Path(tmp), args.ar_layers)
        print(f"AR stage: {shape.describe()}, {shape.max_new_tokens('t2i')} tokens per picture", flush=True)
        ar_rows = ar_stage(ar, shape, device, compile_config)
        prior = ar_rows.pop("_prior")
        print(f"decoder: {steps} steps, guidance 1.5", flush=True)
        dec_rows = decoder_stage(bundle, pipe, prior, steps, device)
    best_ar = min(ar_rows["pack standard"]["seconds"], ar_rows["pack compiled"]["seconds"])
    scale_ar = AR_LAYERS / args.ar_layers if real else 1.0
    scale_steps = 50 / steps if real else 1.0
    e2e = best_ar * scale_ar + dec_rows["pack batched"]["seconds"] * scale_steps
    results = {"machine": machine(), "shape": shape.describe(), "steps": steps, "tiny": args.tiny,
               "ar_layers": args.ar_layers if real else None, "scaled": real and (scale_ar != 1 or scale_steps != 1),
               "ar": ar_rows, "decoder": dec_rows, "end_to_end_seconds": e2e,
               "goals": [{"goal": g, "value": v, "met": ok}
                         for g, v, ok in goals(ar_rows, dec_rows, e2e, real, args.ar_layers, steps)]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    text = report(results)
    print("\n" + text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    print(f"JSON: {args.out}  (one timed run per variant after a warm-up; s/step is the median step time)")


if __name__ == "__main__":
    main()
