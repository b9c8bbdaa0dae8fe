"""VRAM per option for GLM-Image's two models, what fits on 24 / 16 / 12 / 8 GB cards, and the cost of cast layers.

    .venv/bin/python bench/bench_memory.py          # real sizes; on a CUDA GPU also measures each option
    .venv/bin/python bench/bench_memory.py --tiny   # a quick CPU run of the same code (CI)

1. Bytes each option keeps on the GPU, exact, counted on models built on the `meta` device at the published
   sizes (no memory, no download): AR bf16 / fp8_e4m3fn / int8 / nf4 (its 1.28 GiB text embedding table
   stays in RAM inside ComfyUI), DiT bf16 / fp8.
2. Working memory of a 1024x1024 text-to-image run (glmimage_core.memory.vram_plan): the AR model's KV cache and
   activations, a DiT step with both guidance rows, an untiled VAE decode.
3. Per card: the options the README recommends, the peak of each stage and whether it fits without
   streaming; the DiT may stream (ComfyUI's lowvram), the AR model may not.
4. On a CUDA GPU (inside ComfyUI's model manager, as the nodes run it): peak allocated VRAM and tokens/s
   (AR) or s/step (DiT) per option, against the full-load bf16 path in the same run.
5. The default path with cast layers against plain torch layers (same weights, same run): ComfyUI's layers
   must not make the resident model slower (a ratio; on the CPU here, with 2-layer real-size models).

Writes bench/results/memory.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from common import REPO, StepClock, machine, quiet_libraries, timed  # noqa: E402

from glmimage_core.demo import real_size  # noqa: E402
from glmimage_core.memory import vram_plan  # noqa: E402

GIB = vram_plan.GIB
#: Usable VRAM on a card: its size minus the CUDA context and ComfyUI's reserve (~0.8 GiB together).
RESERVE = int(0.8 * GIB)
CARDS = {
    24: {"ar": vram_plan.WeightOption(), "dit": vram_plan.WeightOption(), "dit_stream": False},
    16: {"ar": vram_plan.WeightOption("fp8_e4m3fn"), "dit": vram_plan.WeightOption("fp8_e4m3fn"), "dit_stream": False},
    12: {"ar": vram_plan.WeightOption("fp8_e4m3fn"), "dit": vram_plan.WeightOption("fp8_e4m3fn"), "dit_stream": True},
    8: {"ar": vram_plan.WeightOption(quantization="nf4"), "dit": vram_plan.WeightOption("fp8_e4m3fn"),
        "dit_stream": True},
}
#: ByT5 glyph encoder and VAE in bf16 (published: ByT5 0.83 GB; the VAE is a 16-channel AutoencoderKL, ~0.16 GB).
GLYPH_BYTES, VAE_BYTES = int(0.83 * 1e9), int(0.16 * GIB)


def comfy(device_is_cuda: bool):
    """ComfyUI's model manager in this process (its cast layers and partial loads are what is measured)."""
    path = os.environ.get("GLMIMAGE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui"))  # the GPU check: 0.33.0
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = not device_is_cuda
    import comfy.model_management as mm

    return mm


def sizes() -> dict:
    ar = real_size.build_ar(device="meta")
    ar_inv = vram_plan.inventory(ar, vram_plan.classify_ar, torch.bfloat16, host=vram_plan.AR_HOST_EMBEDDINGS)
    dit = real_size.build_dit(device="meta")
    dit_inv = vram_plan.inventory(dit, vram_plan.classify_dit, torch.bfloat16)
    shape_h = shape_w = 1024
    tokens = 32 * 32 + 16 * 16 + 1
    ar_work = vram_plan.ar_run_bytes(ar.config.text_config, ar.config.vision_config, 40, tokens, 1)
    dit_work = vram_plan.dit_step_bytes(dit.config, shape_h // 8, shape_w // 8, rows=2)
    vae_work = vram_plan.vae_decode_bytes(SimpleNamespace(block_out_channels=(128, 256, 512, 512)),
                                          shape_h // 8, shape_w // 8)
    return {
        "ar": {o.label("bf16"): vram_plan.resident_bytes(ar_inv, o) for o in vram_plan.AR_OPTIONS},
        "ar_host_bytes": ar_inv.host_bytes, "ar_total_bf16": ar_inv.total_numel_bytes,
        "dit": {o.label("bf16"): vram_plan.resident_bytes(dit_inv, o) for o in vram_plan.DIT_OPTIONS},
        "work_1024": {"ar": ar_work, "dit_step_2_rows": dit_work, "vae_decode": vae_work},
        "largest_dit_layer": max(sum(p.numel() for p in block.parameters()) * 2 for block in dit.transformer_blocks),
    }


def card_table(s: dict) -> list[dict]:
    rows = []
    for card, plan in CARDS.items():
        usable = card * GIB - RESERVE
        ar_label, dit_label = plan["ar"].label("bf16"), plan["dit"].label("bf16")
        ar_peak = s["ar"][ar_label] + s["work_1024"]["ar"]
        dit_weights = s["dit"][dit_label]
        dit_free = usable - GLYPH_BYTES - s["work_1024"]["dit_step_2_rows"]
        streamed = max(0, dit_weights - dit_free) if plan["dit_stream"] else 0
        dit_peak = min(dit_weights, max(dit_free, s["largest_dit_layer"])) + GLYPH_BYTES + \
            s["work_1024"]["dit_step_2_rows"]
        vae_peak = VAE_BYTES + min(s["work_1024"]["vae_decode"], usable - VAE_BYTES)  # tiles when it must
        rows.append({"card_gb": card, "usable_bytes": usable, "ar": ar_label, "dit": dit_label,
                     "ar_peak": ar_peak, "dit_peak": dit_peak, "dit_streamed": streamed, "vae_peak": vae_peak,
                     "fits": ar_peak <= usable and dit_peak <= usable and (plan["dit_stream"] or streamed == 0),
                     "vae_tiled": s["work_1024"]["vae_decode"] + VAE_BYTES > usable})
    return rows


def layer_cost(tiny: bool) -> dict:
    """Resident default path: ComfyUI cast layers vs plain torch layers, same weights, interleaved rounds."""
    import copy

    import comfy.ops

    from glmimage_core.weights.cast_layers import make_castable

    if tiny:  # the code path only: GLM-Image's layer kinds at a fraction of the width
        from diffusers import GlmImageTransformer2DModel

        config = real_size.ar_config(1, 1, vocab_size=real_size.IMAGE_END + 513)
        config.text_config.hidden_size, config.text_config.intermediate_size = 512, 1024
        config.text_config.num_attention_heads = 4
        from transformers import GlmImageForConditionalGeneration

        ar = GlmImageForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
        dit = GlmImageTransformer2DModel.from_config({**real_size.dit_config(1), "num_attention_heads": 4})
        dit = dit.to(torch.bfloat16).eval()
    else:
        ar = real_size.build_ar(layers=2, vision_depth=1, vocab_size=real_size.IMAGE_END + 513)
        dit = real_size.build_dit(layers=2)
    # Both sides are copies, so that neither has the weights' first allocation to itself.
    ar, dit, cast_ar, cast_dit = copy.deepcopy(ar), copy.deepcopy(dit), copy.deepcopy(ar), copy.deepcopy(dit)
    make_castable(cast_ar, comfy.ops.disable_weight_init)
    make_castable(cast_dit, comfy.ops.disable_weight_init)
    ids = torch.randint(real_size.IMAGE_END + 1, real_size.IMAGE_END + 512, (1, 1))
    g = torch.Generator().manual_seed(0)
    kwargs = dict(hidden_states=torch.randn(1, 16, 32, 32, generator=g).bfloat16(),
                  encoder_hidden_states=torch.randn(1, 8, 1472, generator=g).bfloat16(),
                  prior_token_id=torch.randint(0, 16384, (1, 256), generator=g),
                  prior_token_drop=torch.zeros(1, 256, dtype=torch.bool), timestep=torch.tensor([500.0]),
                  target_size=torch.tensor([[256.0, 256.0]]), crop_coords=torch.zeros(1, 2), return_dict=False)
    cpu = torch.device("cpu")
    times = {"ar plain": [], "ar cast": [], "dit plain": [], "dit cast": []}
    with torch.inference_mode():
        for _ in range(3 if tiny else 5):
            # An AR forward is short (one token): ten per timing, so that scheduler noise averages out.
            for name, fn in (("ar plain", lambda: [ar(input_ids=ids) for _ in range(10)]),
                             ("ar cast", lambda: [cast_ar(input_ids=ids) for _ in range(10)]),
                             ("dit plain", lambda: dit(**kwargs)), ("dit cast", lambda: cast_dit(**kwargs))):
                times[name].append(timed(fn, cpu).seconds)
    best = {k: min(v) for k, v in times.items()}
    return {"ar_cast_vs_plain": best["ar cast"] / best["ar plain"],
            "dit_cast_vs_plain": best["dit cast"] / best["dit plain"], "seconds": best}


def gpu_options(device: torch.device, ar_grid: int = 32, dit_limits: tuple = (None, None, 3 * GIB)) -> list[dict]:
    """Each option inside ComfyUI's model manager, at the real sizes, on the GPU (peak VRAM, speed).

    The AR model samples a picture of `ar_grid` x `ar_grid` tokens (32: 1024x1024; fewer to fit a time
    budget: the rows record their token count, and `versus_estimates` compares them with the estimate for
    that count). `dit_limits`: the resident budgets of the bf16, fp8 and streamed fp8 DiT rows."""
    from glmimage_core.ar.loading import prepare_ar_model
    from glmimage_core.dit.loading import prepare_dit
    from glmimage_core.demo.decoder import LATENTS_MEAN, LATENTS_STD, SCHEDULER_CONFIG
    from glmimage_core.dit.forward import velocity
    from glmimage_core.ar.generation import generate_tokens
    from glmimage_core.memory.comfy_memory import Residency, ensure_on_device, forget
    from glmimage_core.ar.chat_prompt import prepare_inputs
    from glmimage_core.shapes import GridShape

    rows = []
    shape = GridShape(ar_grid, ar_grid)
    for weight_dtype in ("default", "fp8_e4m3fn"):
        model, processor = real_size.build_ar_with_processor(device=device)
        model.to("cpu")  # ComfyUI's manager moves it to the GPU, as it does for a loaded checkpoint
        torch.cuda.empty_cache()
        ar = prepare_ar_model(model, processor, "random", torch.bfloat16, device, weight_dtype=weight_dtype)
        inputs = prepare_inputs(processor, "a red fox", shape)
        generate_tokens(ar, inputs, seed=0)  # load + warm-up
        m = timed(lambda: generate_tokens(ar, inputs, seed=1), device)
        rows.append({"model": "AR", "option": weight_dtype, "seconds": m.seconds, "grid": ar_grid,
                     "tokens_per_s": shape.max_new_tokens("t2i") / m.seconds, "peak_vram_bytes": m.peak_vram})
        forget(ar)
        ar = model = None  # free before the next option is built
        torch.cuda.empty_cache()

    for weight_dtype, limit in zip(("default", "fp8_e4m3fn", "fp8_e4m3fn"), dit_limits):
        dit_module = real_size.build_dit(device=device).to("cpu")
        torch.cuda.empty_cache()
        vae_config = {"block_out_channels": [128, 256, 512, 512], "latents_mean": list(LATENTS_MEAN),
                      "latents_std": list(LATENTS_STD)}  # realistic stand-ins, see demo_decoder
        dit = prepare_dit(dit_module, "random", torch.bfloat16, device, dict(SCHEDULER_CONFIG), vae_config,
                          weight_dtype)
        ensure_on_device(dit, dit.transformer, device, Residency(max_resident=limit))
        x = torch.randn(2, 16, 128, 128, device=device, dtype=torch.bfloat16)
        glyphs = torch.randn(2, 16, 1472, device=device, dtype=torch.bfloat16)
        ids = torch.randint(0, 16384, (2, 4096), device=device)
        clock = StepClock()

        def steps(n=5):
            for _ in range(n):
                velocity(dit.transformer, x, torch.tensor([500.0, 500.0], device=device), glyphs, ids,
                         torch.tensor([False, True]), 8)
                torch.cuda.synchronize()
                clock.update()

        with torch.inference_mode():
            steps(1)
            clock.stamps.clear()
            m = timed(steps, device)
        rows.append({"model": "DiT", "option": weight_dtype + (f", {limit / GIB:.1f} GiB resident" if limit else ""),
                     "limit_bytes": limit,
                     "s_per_step": clock.seconds_per_step(), "peak_vram_bytes": m.peak_vram})
        forget(dit)
        dit = dit_module = None
        torch.cuda.empty_cache()
    return rows


#: A measured peak this far from its estimate (either way) is flagged: the README's card table is then wrong.
ESTIMATE_TOLERANCE = 0.15


def dit_limits_for_cards(cards: list[dict], s: dict) -> tuple:
    """The DiT rows' resident budgets: all of bf16, all of fp8, and what the 8 GB card keeps resident."""
    eight = next(r for r in cards if r["card_gb"] == 8)
    resident = eight["dit_peak"] - GLYPH_BYTES - s["work_1024"]["dit_step_2_rows"]
    return (None, None, max(int(resident), s["largest_dit_layer"]))


def versus_estimates(cards: list[dict], s: dict, measured: list[dict]) -> list[dict]:
    """Measured peak VRAM next to the estimate for the same model, option and size, per card of the README's
    table; `flag` when they differ by more than ESTIMATE_TOLERANCE. The estimate counts the model's weights
    + its working memory (vram_plan); the glyph encoder, which the DiT rows here do not load, is left out
    of the DiT estimate. The 8 GB card's AR (nf4, bitsandbytes) is not measured here."""
    from glmimage_core.demo.real_size import ar_config
    from glmimage_core.shapes import GridShape

    text = ar_config().text_config
    vision = ar_config().vision_config
    out = []
    by_option = {(r["model"], r["option"]): r for r in measured}
    for card in cards:
        ar_option = {"bf16": "default", "weight_dtype fp8_e4m3fn": "fp8_e4m3fn"}.get(card["ar"])
        row = by_option.get(("AR", ar_option))
        if row:
            grid = row["grid"]
            work = vram_plan.ar_run_bytes(text, vision, 40, GridShape(grid, grid).max_new_tokens("t2i"), 1)
            estimate = s["ar"][card["ar"]] + work
            out.append(_compare(card["card_gb"], "AR", card["ar"], f"{grid}x{grid} tokens", estimate,
                                row["peak_vram_bytes"]))
        else:
            out.append({"card_gb": card["card_gb"], "model": "AR", "option": card["ar"], "estimate": None,
                        "measured": None, "flag": None, "note": "not measured (bitsandbytes is not on the device)"})
        dit_label = card["dit"]
        option = "default" if dit_label == "bf16" else "fp8_e4m3fn"
        if card["card_gb"] == 8:
            row = next((r for r in measured if r["model"] == "DiT" and r.get("limit_bytes")), None)
            estimate = (row["limit_bytes"] + s["work_1024"]["dit_step_2_rows"]) if row else None
        else:
            row = by_option.get(("DiT", option))
            estimate = s["dit"][dit_label] + s["work_1024"]["dit_step_2_rows"]
        if row:
            out.append(_compare(card["card_gb"], "DiT", dit_label, "1024x1024, 2 guidance rows", estimate,
                                row["peak_vram_bytes"]))
    return out


def _compare(card, model, option, size, estimate, peak) -> dict:
    ratio = peak / estimate if estimate and peak else None
    return {"card_gb": card, "model": model, "option": option, "size": size, "estimate": estimate,
            "measured": peak, "ratio": ratio,
            "flag": None if ratio is None else abs(ratio - 1) > ESTIMATE_TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a quick CPU run (smaller speed models, no GPU part)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "memory.json"))
    parser.add_argument("--ar-grid", type=int, default=32,
                        help="GPU part: the AR model samples this many tokens a side (32: 1024x1024; fewer to fit a "
                             "time budget; the comparison with the estimates uses the same size)")
    parser.add_argument("--md", help="also write the tables as markdown to this file")
    parser.add_argument("--no-layer-cost", action="store_true",
                        help="skip part 5 (a CPU measurement; the GPU check leaves it out to save device time)")
    args = parser.parse_args()
    quiet_libraries()
    cuda = torch.cuda.is_available() and not args.tiny
    comfy(cuda)
    s = sizes()
    cards = card_table(s)
    cost = None if args.no_layer_cost else layer_cost(args.tiny)
    measured = gpu_options(torch.device("cuda"), args.ar_grid, dit_limits_for_cards(cards, s)) if cuda else []
    compared = versus_estimates(cards, s, measured) if measured else []
    results = {"machine": machine(), "sizes": s, "cards": cards, "cast_layer_cost": cost, "gpu": measured,
               "versus_estimates": compared, "dry_run": not cuda}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))

    lines: list[str] = []

    def say(text: str = "") -> None:
        lines.extend(str(text).split("\n"))

    gb = vram_plan.gb
    say("| model | option | on the GPU |\n|---|---|---|")
    for label, n in s["ar"].items():
        say(f"| AR | {label} | {gb(n)} (+{gb(s['ar_host_bytes'])} embedding table in RAM) |")
    for label, n in s["dit"].items():
        say(f"| DiT | {label} | {gb(n)} |")
    work = s["work_1024"]
    say(f"\nWorking memory at 1024x1024 (estimates): AR run {gb(work['ar'])}, DiT step with both guidance rows "
          f"{gb(work['dit_step_2_rows'])}, untiled VAE decode {gb(work['vae_decode'])}.")
    say("\n| card | AR | DiT | AR stage peak | DiT stage peak | DiT streamed per step | VAE | fits |")
    say("|---|---|---|---|---|---|---|---|")
    for r in cards:
        say(f"| {r['card_gb']} GB ({gb(r['usable_bytes'])} usable) | {r['ar']} | {r['dit']} | {gb(r['ar_peak'])} | "
              f"{gb(r['dit_peak'])} | {gb(r['dit_streamed']) if r['dit_streamed'] else '-'} | "
              f"{'tiled' if r['vae_tiled'] else 'whole'} | {'yes' if r['fits'] else 'NO'} |")
    if cost:
        say(f"\nCast layers vs plain layers, resident, same weights (time ratio, 1.00 = same): AR forward "
            f"{cost['ar_cast_vs_plain']:.3f}, DiT forward {cost['dit_cast_vs_plain']:.3f}")
    if measured:
        say("\n| model | option | peak VRAM | speed |\n|---|---|---|---|")
        for r in measured:
            speed = f"{r['tokens_per_s']:.1f} tokens/s" if "tokens_per_s" in r else f"{r['s_per_step']:.3f} s/step"
            say(f"| {r['model']} | {r['option']} | {gb(r['peak_vram_bytes'])} | {speed} |")
    else:
        say("\nNo CUDA GPU in this run: the VRAM peaks and speeds per option are not measured (estimates above).")
    if compared:
        say("\n| card | model | option | measured at | estimate | measured peak | measured/estimate | off by > 15% |")
        say("|---|---|---|---|---|---|---|---|")
        for r in compared:
            if r["measured"] is None:
                say(f"| {r['card_gb']} GB | {r['model']} | {r['option']} | - | - | - | - | {r['note']} |")
                continue
            say(f"| {r['card_gb']} GB | {r['model']} | {r['option']} | {r['size']} | {gb(r['estimate'])} | "
                f"{gb(r['measured'])} | {r['ratio']:.2f} | {'FLAG' if r['flag'] else 'no'} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
