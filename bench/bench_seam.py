"""What the host seam costs per token: the pack's generate path against plain transformers `generate`.

    .venv/bin/python bench/bench_seam.py                 # 11 alternating rounds, 1281 tokens, both hosts
    .venv/bin/python bench/bench_seam.py --tiny          # a few tokens and rounds (the CI smoke)

Two variants on the same tiny AR model, prompt, shape and seed, interleaved round by round (so machine
noise hits both alike), medians compared:
  raw generate   the upstream example: chat template with the target size, manual_seed, model.generate
  pack           prepare_inputs + generate_tokens (the node's path: residency, per-token hook, progress)
once outside ComfyUI (the plain host: command line, scripts) and once inside it (ComfyUI imported in this
process and the pack set up by its own entry point, as ComfyUI does: ComfyUI's cast layers, model manager,
progress bar and cancel check), each against `generate` on that host's own model. The goal (issue 17) is
pack / raw <= 1.03 on both. Writes bench/results/seam.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import PACK, REPO, comfy_pack, machine, quiet_libraries, raw_generate  # noqa: E402  (puts the repo on sys.path)

PROMPT = "A red fox in the snow"
GOAL = 1.03


def comfy_modules(comfyui: Path):
    """The pack imported as ComfyUI imports a custom node folder, set up by its own `comfy_entrypoint`."""
    pack = comfy_pack(comfyui, cpu=not torch.cuda.is_available())
    asyncio.run(pack.comfy_entrypoint())
    return lambda name: importlib.import_module(f"{PACK}.{name}")


def plain_modules():
    return lambda name: importlib.import_module(name)


def measure(modules, folder: Path, shape_hw: tuple[int, int], rounds: int) -> dict:
    """Medians of both variants over `rounds` alternating rounds, and their ratio."""
    ar = modules("glmimage_core.ar.loading").load_ar_model(str(folder), dtype="fp32", device="auto")
    shape = modules("glmimage_core.shapes").GridShape(*shape_hw)
    prepare_inputs = modules("glmimage_core.ar.chat_prompt").prepare_inputs
    generate_tokens = modules("glmimage_core.ar.generation").generate_tokens

    def pack() -> int:
        tokens = generate_tokens(ar, prepare_inputs(ar.processor, PROMPT, shape), seed=0)
        return int(tokens.sequences.shape[1])

    def raw() -> int:
        return raw_generate(ar, PROMPT, shape, 0)

    variants = {"raw generate": raw, "pack": pack}
    tokens = {name: fn() for name, fn in variants.items()}  # warm-up (and the token counts)
    assert tokens["pack"] == tokens["raw generate"], tokens  # the same work: same seed, same tokens
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            if ar.device.type == "cuda":
                torch.cuda.synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if ar.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    cpu_medians = {name: statistics.median(samples) for name, samples in cpu.items()}
    return {"device": str(ar.device), "tokens": tokens, "rounds": rounds, "seconds": times, "median_s": medians,
            "ratio": medians["pack"] / medians["raw generate"],
            # On a shared machine wall time includes other jobs' turns; the fastest round and the process's own
            # CPU time (one thread: all of its work) are what the code itself costs.
            "ratio_of_fastest": min(times["pack"]) / min(times["raw generate"]),
            "cpu_seconds": cpu, "cpu_median_s": cpu_medians,
            "cpu_ratio": cpu_medians["pack"] / cpu_medians["raw generate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11, help="alternating rounds (default 11)")
    parser.add_argument("--tiny", action="store_true", help="2 rounds of a small grid: checks that it runs")
    parser.add_argument("--comfyui", default=str(REPO / ".cache" / "comfyui"),
                        help="ComfyUI tree for the in-ComfyUI half (skipped, saying so, when absent)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine spinning worker threads add noise)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "seam.json"))
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    rounds, shape = (2, (1, 1)) if args.tiny else (args.rounds, (32, 32))  # 32x32: 1024 + 256 + 1 = 1281 tokens
    results: dict = {"machine": machine(), "goal": GOAL, "hosts": {}}
    with tempfile.TemporaryDirectory() as tmp:
        from glmimage_core.demo.models import build_tiny_ar_model

        folder = build_tiny_ar_model(Path(tmp) / "tiny")
        results["hosts"]["plain (outside ComfyUI)"] = measure(plain_modules(), folder, shape, rounds)
        comfyui = Path(args.comfyui)
        if (comfyui / "comfy").is_dir():
            results["hosts"]["ComfyUI (in-process)"] = measure(comfy_modules(comfyui), folder, shape, rounds)
        else:
            print(f"no ComfyUI at {comfyui}: the in-ComfyUI half is skipped")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nMachine: {results['machine']['cpu']}, {results['machine']['threads']} threads\n")
    print("| host | device | tokens | raw generate median s | pack median s | pack / raw (medians) | "
          "fastest rounds | CPU time medians | goal |")
    print("|---|---|---|---|---|---|---|---|---|")
    for host, row in results["hosts"].items():
        print(f"| {host} | {row['device']} | {row['tokens']['pack']} | {row['median_s']['raw generate']:.4f} | "
              f"{row['median_s']['pack']:.4f} | {row['ratio']:.3f} | {row['ratio_of_fastest']:.3f} | "
              f"{row['cpu_ratio']:.3f} | <= {GOAL} |")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
