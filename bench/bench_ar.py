"""AR token stage: speed and memory, every variant side by side in one run.

    .venv/bin/python bench/bench_ar.py            # CPU here; on a GPU machine it uses CUDA
    .venv/bin/python bench/bench_ar.py --rounds 5 # more repeats

Variants (each timed on the same model, prompt, shape and seed, interleaved
round by round so machine noise hits all of them alike):
  raw generate     processor + model.generate, as the upstream example does
  node standard    the pack's path (prompt prep + generate_tokens + extract_prior)
  node compiled    speed=compiled (falls back to standard off CUDA; the table says so)
  batch 1/2/4      images=N in one batched generate (images/s is the figure to compare;
                   batch 1 is the node standard run)
Models: the tiny test model, and a random model with GLM-Image's real layer
sizes (hidden 4096, 32 heads, 2 KV heads, MLP 13696, vocab 168064) but one
layer, in bf16 (~1.9 GB). Also: peak host RAM while loading that model, as a
multiple of its weight bytes (a fresh subprocess per measurement).
Writes bench/results/ar.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, raw_generate  # noqa: E402  (puts the repo on sys.path)

from glmimage_core.ar.loading import load_ar_model  # noqa: E402
from glmimage_core.demo.models import build_tiny_ar_model  # noqa: E402
from glmimage_core.tokens.grids import extract_prior  # noqa: E402
from glmimage_core.ar.generation import generate_tokens  # noqa: E402
from glmimage_core.ar.chat_prompt import prepare_inputs  # noqa: E402
from glmimage_core.shapes import GridShape  # noqa: E402

PROMPT = "A red fox in the snow"


def build_real_size_model(out: Path, layers: int = 1) -> Path:
    """GLM-Image's real text layer sizes, `layers` layers, random bf16 weights, saved as safetensors."""
    from transformers import GlmImageConfig, GlmImageForConditionalGeneration

    tiny = build_tiny_ar_model(out)  # processor files (tokenizer etc.) come from the tiny model
    config = GlmImageConfig.from_pretrained(tiny)
    text = config.text_config
    text.hidden_size, text.num_attention_heads, text.num_key_value_heads = 4096, 32, 2
    text.intermediate_size, text.num_hidden_layers = 13696, layers
    text.vocab_size, text.vision_vocab_size = 168064, 16512
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [8, 12, 12], "partial_rotary_factor": 0.5}
    config.vq_config.num_embeddings = 16384
    config.image_start_token_id, config.image_end_token_id = 16384, 16385
    text.eos_token_id = 16385
    torch.manual_seed(0)
    model = GlmImageForConditionalGeneration(config).to(torch.bfloat16).eval()
    with torch.no_grad():  # keep sampling inside the grid, as the tiny demo model does
        model.lm_head.weight[16384:] = 0
        model.lm_head.weight[:16384] *= 10
    model.generation_config.eos_token_id = 16385
    model.generation_config.bos_token_id = 16384
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def peak_load_ram(folder: Path) -> dict:
    code = f"""
import resource, sys
sys.path.insert(0, {str(REPO)!r})
import torch, transformers
from glmimage_core.ar.loading import load_ar_model
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM'):
            return int(line.split()[1]) * 1024
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
base = rss()
m = load_ar_model({str(folder)!r}, dtype='bf16', device='cpu')
with torch.no_grad():  # touch every weight: memory-mapped pages count once they are read
    touched = sum(float(p.sum()) for p in m.model.parameters())
print(base, hwm(), rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    base, peak, after = (int(v) for v in out.stdout.split()[-3:])
    size = weight_bytes(folder)
    return {"weight_bytes": size, "peak_over_base_bytes": peak - base, "ratio": (peak - base) / size,
            "resident_after_load_ratio": (after - base) / size}


def node_path(ar, shape: GridShape, seed: int, images: int = 1, speed: str = "standard") -> tuple[int, list]:
    inputs = prepare_inputs(ar.processor, PROMPT, shape)
    tokens = generate_tokens(ar, inputs, seed=seed, images=images, speed=speed)
    extract_prior(tokens)
    return int(tokens.sequences.shape[1]), tokens.notes


def measure(ar, shape: GridShape, rounds: int) -> dict:
    variants = {
        "raw generate": lambda: (raw_generate(ar, PROMPT, shape, 0), []),
        "node standard (= batch 1)": lambda: node_path(ar, shape, 0),
        "node compiled": lambda: node_path(ar, shape, 0, speed="compiled"),
        "batch 2": lambda: node_path(ar, shape, 0, images=2),
        "batch 4": lambda: node_path(ar, shape, 0, images=4),
    }
    images = {"batch 2": 2, "batch 4": 4}
    times: dict[str, list[float]] = {k: [] for k in variants}
    info: dict[str, dict] = {}
    if ar.device.type == "cuda":  # warm-up: CUDA context, kernels, and the compiled step
        for fn in variants.values():
            fn()
    else:
        raw_generate(ar, PROMPT, GridShape(1, 1), 0)
    for _ in range(rounds):
        for name, fn in variants.items():
            if ar.device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            n_tokens, notes = fn()
            if ar.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            info[name] = {"tokens": n_tokens, "notes": notes,
                          "peak_vram_bytes": torch.cuda.max_memory_allocated() if ar.device.type == "cuda" else None}
    raw = statistics.median(times["raw generate"])
    one = statistics.median(times["node standard (= batch 1)"])
    rows = {}
    for name, samples in times.items():
        med = statistics.median(samples)
        n_img = images.get(name, 1)
        rows[name] = {"median_s": med, "tokens_per_s": info[name]["tokens"] * n_img / med,
                      "images_per_s": n_img / med, "time_vs_raw": med / raw,
                      "images_per_s_vs_batch1": (n_img / med) / (1 / one), **info[name]}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per variant (default 2)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ar.json"))
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    rounds = args.rounds
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__,
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    results = {"machine": machine, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_ar_model(Path(tmp) / "tiny")
        real = build_real_size_model(Path(tmp) / "real-size-1-layer")
        results["load_ram"] = peak_load_ram(real)
        setups = [("tiny test model (fp32)", tiny, "fp32", GridShape(8, 8)),
                  ("real layer sizes, 1 layer (bf16)", real, "bf16", GridShape(2, 2))]
        for label, folder, dtype, shape in setups:
            ar = load_ar_model(str(folder), dtype=dtype, device=args.device)
            print(f"measuring {label} on {ar.device}: {shape.describe()}, "
                  f"{shape.max_new_tokens('t2i')} tokens per picture, {rounds} rounds", flush=True)
            results["models"][label] = {"device": str(ar.device), "shape": shape.describe(),
                                        "rows": measure(ar, shape, rounds)}
            del ar
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nMachine: {machine['cpu']}, {machine['cores']} threads, torch {machine['torch']}, "
          f"GPU: {machine['cuda'] or 'none'}\n")
    print("| model | variant | median s | tokens/s | images/s | time vs raw generate | images/s vs batch 1 | note |")
    print("|---|---|---|---|---|---|---|---|")
    for label, entry in results["models"].items():
        for name, row in entry["rows"].items():
            note = "; ".join(row["notes"])[:60] + ("…" if len("; ".join(row["notes"])) > 60 else "")
            print(f"| {label} | {name} | {row['median_s']:.3f} | {row['tokens_per_s']:.1f} | "
                  f"{row['images_per_s']:.3f} | {row['time_vs_raw']:.3f} | {row['images_per_s_vs_batch1']:.2f} | "
                  f"{note} |")
    ram = results["load_ram"]
    print(f"\nLoading the real-size model ({ram['weight_bytes'] / 2**30:.2f} GiB of bf16 weights) and reading every "
          f"weight once: peak host RAM {ram['ratio']:.2f}x the weight bytes (resident afterwards "
          f"{ram['resident_after_load_ratio']:.2f}x).")
    print("Quantized loading (int8/nf4, bitsandbytes) needs a CUDA GPU: not measured on a CPU machine.")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
