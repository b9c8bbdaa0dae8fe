"""GGUF files of the AR model and the DiT: download size per type at the published sizes, and loading measured.

    .venv/bin/python bench/bench_gguf.py                 # sizes + loading (DiT 4 of 30 layers, AR 2 of 40)
    .venv/bin/python bench/bench_gguf.py --sizes-only    # the size table only (no weights built)
    .venv/bin/python bench/bench_gguf.py --tiny          # a quick run of the same code (CI)

1. Download size per format, exact: the pack's GGUF plan (glmimage_core/weights/gguf_files.py: which tensors are
   quantized, which keep their precision) applied to models built on the `meta` device at the published sizes
   (transformer/config.json; the AR model's config from the facts notes, glmimage_core.demo.real_size), next to
   bf16. Tensor data only (a file adds a header of well under 1 MB: the config and, for the AR model, the
   tokenizer's text, ~10-20 MB at the real vocabulary).
2. Loading, measured on this machine in a fresh process per file (ComfyUI in-process with ComfyUI-GGUF on
   sys.path, the pack's loader, as the nodes load): seconds from file to ready, peak RSS and peak anonymous memory
   (RssAnon sampled every 5 ms) while loading, above the process before loading (with ComfyUI, the model classes
   and ComfyUI-GGUF imported, which take ~0.5 GiB whatever is loaded), for Q8_0 and Q4_0 at the
   published widths with a layer cut (DiT 4 of 30 layers, AR 2 of 40 text and 2 of 40 vision layers: marked
   "cut"; the AR text embedding table and output head are whole). "kept" is what the loaded model holds (the
   quantized bytes, mapped from the file, plus the tensors dequantised to bf16).

Writes bench/results/gguf.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import REPO, machine, quiet_libraries  # noqa: E402

from glmimage_core.demo import real_size  # noqa: E402
from glmimage_core.weights import gguf_files  # noqa: E402

GIB = 1 << 30
SIZE_TYPES = ("BF16", *gguf_files.QTYPES)
COMFYUI_GGUF_TAR = Path(os.environ.get("GLMIMAGE_COMFYUI_GGUF_TAR",
                                       REPO.parent / "shared" / "vendor" / "comfyui-gguf-795e451.tar.gz"))


def meta_models(ar_layers: int = 40, vision_depth: int = 40, dit_layers: int = 30) -> dict:
    with torch.device("meta"):
        return {"ar": real_size.build_ar(ar_layers, vision_depth, device="meta"),
                "dit": real_size.build_dit(dit_layers, device="meta")}


def shapes_of(model: torch.nn.Module) -> dict:
    return {name: (tuple(t.shape), torch.bfloat16) for name, t in model.state_dict().items()}


def download_sizes() -> dict:
    """part -> type -> bytes of tensor data, at the published sizes."""
    out = {}
    for part, model in meta_models().items():
        shapes, linear = shapes_of(model), gguf_files.linear_weight_names(model)
        sizes = {"BF16": sum(2 * int(torch.Size(s).numel()) for s, _ in shapes.values())}
        for q in gguf_files.QTYPES:
            sizes[q] = gguf_files.file_bytes(gguf_files.plan_file(shapes, part, gguf_files.qtype_of(q), linear))
        out[part] = sizes
    return out


def write_cut_files(folder: Path, tiny: bool) -> dict:
    """GGUF files (Q8_0, Q4_0) of real-width models with a layer cut, random weights; (part, q) -> path."""
    models = {"dit": real_size.build_dit(1 if tiny else 4),
              "ar": real_size.build_ar(1 if tiny else 2, 1 if tiny else 2, vocab_size=4096 if tiny else
                                       real_size.TEXT_VOCAB)}
    files = {}
    for part, model in models.items():
        state = model.state_dict()
        shapes, linear = shapes_of(model), gguf_files.linear_weight_names(model)
        config = model.config.to_dict() if part == "ar" else dict(model.config)
        metadata = {"glmimage.format_version": "1", "glmimage.part": part, "glmimage.config": json.dumps(config),
                    "glmimage.files": json.dumps(_files_for(part))}
        for q in ("Q8_0", "Q4_0"):
            path = folder / f"cut_{part}_{q}.gguf"
            gguf_files.write_gguf(path, part, shapes, state.__getitem__, q, linear, metadata, overwrite=True)
            files[(part, q)] = path
        del state, model
    return files


def _files_for(part: str) -> dict:
    """The text files a part's file carries: the demo processor for the AR model, the scheduler and VAE
    settings for the DiT (what the loaders read from a file's metadata)."""
    if part == "dit":
        from glmimage_core.demo.decoder import LATENTS_MEAN, LATENTS_STD, SCHEDULER_CONFIG

        vae = {"latents_mean": list(LATENTS_MEAN), "latents_std": list(LATENTS_STD),
               "block_out_channels": [128, 256, 512, 512], "latent_channels": 16}
        return {"scheduler/scheduler_config.json": json.dumps(SCHEDULER_CONFIG), "vae/config.json": json.dumps(vae)}
    from glmimage_core.demo.models import build_processor

    with tempfile.TemporaryDirectory() as tmp:
        build_processor(real_size.CODEBOOK, max_side=2048).save_pretrained(tmp)
        return {f"processor/{p.name}": p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}


CHILD = r"""
import importlib.util, json, sys, threading, time, resource
comfy_dir, repo, gguf_parent, path, part = sys.argv[1:6]
sys.path[:0] = [comfy_dir, repo]; sys.path.append(gguf_parent)
from comfy.cli_args import args; args.cpu = True
spec = importlib.util.spec_from_file_location("pack", repo + "/__init__.py", submodule_search_locations=[repo])
pack = importlib.util.module_from_spec(spec); sys.modules["pack"] = pack; spec.loader.exec_module(pack)
gguf_ops = importlib.import_module("pack.glmimage_comfy.gguf_ops"); gguf_ops.install()
import torch
# Imports are not loading: the model classes, the processor and ComfyUI-GGUF are imported before the baseline.
from diffusers import GlmImageTransformer2DModel
from transformers import AutoProcessor, GlmImageForConditionalGeneration
import pack.glmimage_core.dit.loading, pack.glmimage_core.ar.loading
gguf_ops.comfyui_gguf()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
peak = {"anon": 0, "rss": 0}
done = False
def sample():
    while not done:
        peak["anon"] = max(peak["anon"], status("RssAnon:")); peak["rss"] = max(peak["rss"], status("VmRSS:"))
        time.sleep(0.005)
base_rss, base_anon = status("VmRSS:"), status("RssAnon:")
thread = threading.Thread(target=sample, daemon=True); thread.start()
start = time.perf_counter()
if part == "dit":
    from pack.glmimage_core.dit.loading import load_dit
    model = load_dit(path, dtype="bf16", device="cpu").transformer
else:
    from pack.glmimage_core.ar.loading import load_ar_model
    model = load_ar_model(path, dtype="bf16", device="cpu").model
seconds = time.perf_counter() - start
done = True; thread.join()
kept = 0
for p in list(model.parameters()) + [getattr(m, "host_weight", None) for m in model.modules()]:
    if p is not None:
        kept += p.untyped_storage().nbytes()
print(json.dumps({"seconds": seconds, "peak_rss": peak["rss"] - base_rss, "peak_anon": peak["anon"] - base_anon,
                  "kept": kept, "base_rss": base_rss}))
"""


def measure_loading(files: dict, comfy_dir: Path, gguf_parent: Path) -> dict:
    out = {}
    for (part, q), path in files.items():
        run = subprocess.run([sys.executable, "-c", CHILD, str(comfy_dir), str(REPO), str(gguf_parent), str(path),
                              part], capture_output=True, text=True, timeout=1800)
        line = next((l for l in run.stdout.splitlines() if l.startswith("{")), None)
        if line is None:
            raise RuntimeError(f"loading {path} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}")
        out[f"{part}/{q}"] = {**json.loads(line), "file": path.stat().st_size}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="1-layer models and a small vocabulary (CI)")
    parser.add_argument("--sizes-only", action="store_true", help="the download sizes only (no weights built)")
    parser.add_argument("--out", help="where the JSON goes (default bench/results/gguf.json)")
    args = parser.parse_args()
    quiet_libraries()
    results: dict = {"machine": machine(), "download_bytes": download_sizes()}
    print("| part | " + " | ".join(SIZE_TYPES) + " |\n|---|" + "---|" * len(SIZE_TYPES))
    for part, sizes in results["download_bytes"].items():
        print(f"| {part} | " + " | ".join(f"{sizes[t] / GIB:.2f} GiB" for t in SIZE_TYPES) + " |")
    if not args.sizes_only:
        from tests.comfy_harness import COMFYUI_DIR, unpack_comfyui_gguf

        with tempfile.TemporaryDirectory() as tmp:
            gguf_dir = unpack_comfyui_gguf(Path(tmp) / "nodes")
            if gguf_dir is None:
                raise SystemExit(f"ComfyUI-GGUF's source is not at {COMFYUI_GGUF_TAR}")
            start = time.perf_counter()
            files = write_cut_files(Path(tmp), args.tiny)
            results["write_seconds"] = time.perf_counter() - start
            results["cut"] = "tiny" if args.tiny else "DiT 4 of 30 layers; AR 2 of 40 text + 2 of 40 vision layers"
            results["loading"] = measure_loading(files, COMFYUI_DIR, gguf_dir.parent)
        print(f"\nLoading ({results['cut']}; published widths, cut, on {results['machine']['cpu']}):\n")
        print("| file | size | kept | load s | peak RSS | peak anon | RSS / (1.15 x kept + 1.5 GB) |\n"
              "|---|---|---|---|---|---|---|")
        for name, row in results["loading"].items():
            goal = 1.15 * row["kept"] + 1.5e9
            print(f"| {name} (cut) | {row['file'] / GIB:.2f} GiB | {row['kept'] / GIB:.2f} GiB | {row['seconds']:.1f} | "
                  f"{row['peak_rss'] / GIB:.2f} GiB | {row['peak_anon'] / GIB:.2f} GiB | {row['peak_rss'] / goal:.2f} |")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / ("gguf_tiny.json" if args.tiny else "gguf.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
