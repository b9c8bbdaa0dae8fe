"""Host memory and time of loading each weight format, for the DiT and the AR model (issue 19, section 2).

    .venv/bin/python bench/bench_load.py                 # published widths, a layer cut (DiT 8 of 30, AR 4 of 40)
    .venv/bin/python bench/bench_load.py --tiny          # a quick CPU run of the same code (CI)

Real-size models with random weights (glmimage_core.demo.real_size; nothing downloaded) are written once as the
hub folder would hold them (bf16 safetensors) and converted with the pack's own `convert` into single files. Then
each (model, format) is loaded in a process of its own, inside ComfyUI's model manager (--cpu; the loaders' cast
layers), with the page cache of its files dropped first, measuring:

- peak RSS while loading (resident set, file pages included: what a mapping of the file holds), sampled every
  5 ms and as the kernel's own high-water mark (VmHWM), and the RSS before loading (Python, torch, ComfyUI);
- peak anonymous memory (RssAnon: tensors the process allocated);
- seconds from the file to the model ready for ComfyUI;
- what is kept: the bytes of the loaded model's parameters and buffers;
- the goal: peak RSS <= 1.15 x kept + 1.5 GiB.

The "before" rows load the bf16 folder with weight_dtype fp8 the way 0.2.0 did (from_pretrained of the whole
model in bf16, then the whole-model conversion): today's figures beside the new lean paths. Rows are at the cut
depth; the `scaled` columns add the layers cut away (their kept bytes; the overhead of a lean load does not grow
with depth, the old path's does: it is scaled by the same factor), marked as scaled.
Writes bench/results/load.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import REPO, machine  # noqa: E402

GIB = 2**30
CASES = {
    "dit": ["bf16 folder", "bf16 folder, weight_dtype fp8 (0.2.0: whole model, then fp8)",
            "bf16 folder, weight_dtype fp8 (lean)", "bf16 file", "fp8 file (comfy_quant)", "fp8 file (scaled_fp8)"],
    "ar": ["bf16 folder", "bf16 folder, weight_dtype fp8 (0.2.0: whole model, then fp8)",
           "bf16 folder, weight_dtype fp8 (lean)", "bf16 file", "fp8 file (comfy_quant)", "fp8 file (scaled_fp8)"],
}
FULL_DEPTH = {"dit": 30, "ar": 40}


def prepare(work: Path, dit_layers: int, ar_layers: int, tiny: bool) -> dict:
    """The bf16 hub folders at the cut depth and the pack's single files of them (kept between runs)."""
    import torch

    from glmimage_core.demo import real_size
    from glmimage_core.demo.decoder import build_tiny_full_hub_layout
    from glmimage_core.weights import convert

    hub = work / "GLM-Image"
    marker = work / f"ready-{dit_layers}-{ar_layers}-{int(tiny)}"
    if not marker.exists():
        build_tiny_full_hub_layout(hub)  # vae/, scheduler/, processor/ of the tiny model; the weights replaced below
        if not tiny:
            import shutil

            for folder in ("transformer", "vision_language_encoder", "processor"):
                shutil.rmtree(hub / folder)
            torch.manual_seed(0)
            dit = real_size.build_dit(layers=dit_layers, dtype=torch.bfloat16)
            dit.save_pretrained(hub / "transformer", safe_serialization=True, max_shard_size="2GB")
            del dit
            model, processor = real_size.build_ar_with_processor(layers=ar_layers, vision_depth=ar_layers,
                                                                 dtype=torch.bfloat16)
            model.save_pretrained(hub / "vision_language_encoder", safe_serialization=True, max_shard_size="2GB")
            processor.save_pretrained(hub / "processor")
            del model
        for fmt, convention in (("bf16", None), ("fp8_e4m3fn", "comfy_quant"), ("fp8_e4m3fn", "scaled_fp8")):
            for part in ("dit", "ar"):
                name = convert.default_name(part, fmt, convention)
                if not (work / name).exists():
                    convert.convert_part(hub, part, work, fmt, convention, name)
        marker.touch()
    return {"hub": str(hub), "work": str(work)}


class Sampler(threading.Thread):
    """Peak VmRSS / RssAnon / RssFile of this process, read from /proc every 5 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.running = True

    @staticmethod
    def now() -> dict:
        values = {}
        for line in open("/proc/self/status"):
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
        return values

    def run(self) -> None:
        while self.running:
            for key, value in self.now().items():
                self.peak[key] = max(self.peak[key], value)
            time.sleep(0.005)


def _drop_cache(paths: list[Path]) -> None:
    for path in paths:
        for file in ([path] if path.is_file() else sorted(path.rglob("*.safetensors"))):
            fd = os.open(file, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(model: str, case: str, work: Path) -> dict:
    """One load, in this (fresh) process, with ComfyUI as the engine's host (its cast layers keep fp8)."""
    import torch
    from common import comfy_pack, quiet_libraries

    comfy_pack(os.environ.get("GLMIMAGE_COMFYUI_DIR", str(REPO / ".cache" / "comfyui")), cpu=True)

    quiet_libraries()
    from glmimage_core.ar import loading as ar_loading
    from glmimage_core.dit import loading as dit_loading
    from glmimage_core.memory import vram_plan
    from glmimage_core.weights import convert

    hub = work / "GLM-Image"
    part = "dit" if model == "dit" else "ar"
    files = {"bf16 file": ("bf16", None), "fp8 file (comfy_quant)": ("fp8_e4m3fn", "comfy_quant"),
             "fp8 file (scaled_fp8)": ("fp8_e4m3fn", "scaled_fp8")}
    source = work / convert.default_name(part, *files[case]) if case in files else hub / (
        "transformer" if part == "dit" else "vision_language_encoder")
    _drop_cache([source])
    sampler = Sampler()
    before = sampler.now()
    sampler.start()
    start = time.perf_counter()
    if case.startswith("bf16 folder, weight_dtype fp8 (0.2.0"):
        if part == "dit":
            from diffusers import GlmImageTransformer2DModel

            module = GlmImageTransformer2DModel.from_pretrained(source, torch_dtype=torch.bfloat16)
            dit_loading.prepare_dit(module, str(source), torch.bfloat16, torch.device("cpu"), {},
                                    {"latents_mean": [0.0] * 16, "latents_std": [1.0] * 16}, "fp8_e4m3fn")
        else:
            from transformers import GlmImageForConditionalGeneration

            module = GlmImageForConditionalGeneration.from_pretrained(source, dtype=torch.bfloat16)
            ar_loading.prepare_ar_model(module, None, str(source), torch.bfloat16, torch.device("cpu"),
                                        weight_dtype="fp8_e4m3fn")
    else:
        weight_dtype = "fp8_e4m3fn" if "weight_dtype fp8" in case else "default"
        path = str(source) if case in files else str(hub)
        if part == "dit":
            module = dit_loading.load_dit(path, "bf16", "cpu", weight_dtype).transformer
        else:
            module = ar_loading.load_ar_model(path, "bf16", "cpu", weight_dtype=weight_dtype).model
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    seen, kept = set(), 0
    tensors = list(module.parameters()) + list(module.buffers())
    for name in vram_plan.AR_HOST_EMBEDDINGS if part == "ar" else ():
        tensors.append(module.get_submodule(name).weight)  # the host embedding: kept in RAM, not a parameter
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            kept += tensor.numel() * tensor.element_size()
    # The kernel's high-water mark of this process's memory map (VmHWM; ru_maxrss would carry the parent's
    # peak across exec).
    maxrss = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {"model": model, "case": case, "seconds": seconds, "kept_bytes": kept,
            "rss_before": before["VmRSS"], "anon_before": before["RssAnon"],
            "peak_rss": max(sampler.peak["VmRSS"], maxrss), "peak_rss_sampled": sampler.peak["VmRSS"],
            "peak_anon": sampler.peak["RssAnon"], "peak_file": sampler.peak["RssFile"],
            "stored_bytes": sum(f.stat().st_size for f in ([source] if source.is_file() else source.rglob("*.safetensors")))}


def scaled(row: dict, cut: int, full: int, per_layer: int) -> dict:
    """The figures at full depth: kept bytes + the layers cut away; the old path also holds their bf16 pages."""
    extra = (full - cut) * per_layer
    fp8_kept = "fp8" in row["case"]
    kept_full = row["kept_bytes"] + (extra // 2 if fp8_kept else extra)
    peak_full = row["peak_rss"] + (kept_full - row["kept_bytes"])
    if row["case"].endswith("(0.2.0: whole model, then fp8)"):
        peak_full += extra  # the whole bf16 model is read before the conversion
    return {"kept_full": kept_full, "peak_rss_full": peak_full, "goal_full": 1.15 * kept_full + 1.5 * GIB}


def per_layer_bytes(model: str) -> int:
    import torch

    from glmimage_core.demo import real_size

    if model == "dit":
        dit = real_size.build_dit(layers=1, device="meta")
        return sum(p.numel() for p in dit.transformer_blocks[0].parameters()) * 2
    ar = real_size.build_ar(layers=1, vision_depth=1, device="meta")
    text = sum(p.numel() for p in ar.model.language_model.layers[0].parameters())
    vision = sum(p.numel() for p in ar.model.visual.blocks[0].parameters())
    del torch
    return (text + vision) * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny test models (a quick CPU check)")
    parser.add_argument("--dit-layers", type=int, default=8)
    parser.add_argument("--ar-layers", type=int, default=4)
    parser.add_argument("--work", default=str(REPO / ".cache" / "bench_load"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "load.json"))
    parser.add_argument("--only", choices=list(CASES), help="one model's rows only (the CI smoke run: dit)")
    parser.add_argument("--measure", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure[0], args.measure[1], work)))
        return
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, args.dit_layers, args.ar_layers, args.tiny)
    rows = []
    for model, cases in CASES.items():
        if args.only and model != args.only:
            continue
        for case in cases:
            done = subprocess.run([sys.executable, __file__, "--work", str(work), "--measure", model, case],
                                  capture_output=True, text=True, cwd=REPO / "bench")
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{model} / {case} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
            row = json.loads(line[len("RESULT "):])
            row["goal"] = 1.15 * row["kept_bytes"] + 1.5 * GIB
            row["meets_goal"] = row["peak_rss"] <= row["goal"]
            if not args.tiny:
                cut = args.dit_layers if model == "dit" else args.ar_layers
                row.update(scaled(row, cut, FULL_DEPTH[model], per_layer_bytes(model)))
            rows.append(row)
            print(f"{model:3} {case:58} peak RSS {row['peak_rss'] / GIB:5.2f} GiB, anon {row['peak_anon'] / GIB:5.2f}, "
                  f"kept {row['kept_bytes'] / GIB:5.2f}, {row['seconds']:6.1f} s, goal "
                  f"{'met' if row['meets_goal'] else 'MISSED'}", flush=True)
    result = {"machine": machine(), "dit_layers": args.dit_layers, "ar_layers": args.ar_layers, "tiny": args.tiny,
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n| model | format | peak RSS | peak anon | RSS before | kept | goal (1.15 x kept + 1.5) | met | "
          f"file -> ready | kept, full depth (scaled) | peak RSS, full depth (scaled) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        full = (f"{r['kept_full'] / GIB:.2f} GiB | {r['peak_rss_full'] / GIB:.2f} GiB"
                if "kept_full" in r else "- | -")
        print(f"| {r['model']} | {r['case']} | {r['peak_rss'] / GIB:.2f} GiB | {r['peak_anon'] / GIB:.2f} GiB | "
              f"{r['rss_before'] / GIB:.2f} GiB | {r['kept_bytes'] / GIB:.2f} GiB | {r['goal'] / GIB:.2f} GiB | "
              f"{'yes' if r['meets_goal'] else 'NO'} | {r['seconds']:.1f} s | {full} |")


if __name__ == "__main__":
    main()
