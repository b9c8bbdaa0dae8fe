"""Decode speed: `glmimage_core.dit.sampling.decode_prior` vs diffusers' `GlmImagePipeline`, side by side.

Both run on the same tiny random components (one hub-layout folder, loaded
once by each), the same tokens and the same seed; repeats alternate which one
goes first so that warm caches and background load hit both alike. Prints the
ratio of median times (ours / diffusers; < 1 means we are faster) and the
largest pixel difference, and writes bench/results/decode.json.

    python bench/bench_decode.py [--device cpu|cuda] [--tokens 16x16] [--steps 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from glmimage_core.dit.loading import load_decoder  # noqa: E402
from glmimage_core.dit.sampling import decode_prior  # noqa: E402
from glmimage_core.demo.decoder import build_tiny_full_hub_layout  # noqa: E402
from glmimage_core.demo.models import TINY_CODEBOOK  # noqa: E402
from glmimage_core.payloads import PriorTokens  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", default="16x16", help="d32 grid, HxW (16x16 = 512x512 px)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "decode.json"))
    args = parser.parse_args()

    from diffusers import GlmImagePipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    device = torch.device(args.device)
    token_h, token_w = (int(v) for v in args.tokens.lower().split("x"))
    seed = 1234

    with tempfile.TemporaryDirectory() as tmp:
        root = build_tiny_full_hub_layout(Path(tmp) / "tiny-glm-image")
        bundle = load_decoder(str(root), dtype="fp32", device=args.device)
        pipe = GlmImagePipeline.from_pretrained(root, torch_dtype=torch.float32, local_files_only=True)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)

    grids = torch.randint(0, TINY_CODEBOOK, (args.batch, token_h, token_w), generator=torch.Generator().manual_seed(0))
    prior = PriorTokens(grids=grids, mode="t2i", prompt='A poster that says "GLM-Image"', codebook_size=TINY_CODEBOOK)

    class _Quiet:
        def update(self, n: int = 1) -> None:
            pass

    def ours():
        return decode_prior(bundle, prior, steps=args.steps, guidance=args.guidance, seed=seed, progress=_Quiet())

    def theirs():
        prompt = prior.prompt if args.batch == 1 else [prior.prompt] * args.batch
        images = pipe(prompt=prompt, height=prior.height, width=prior.width, prior_token_ids=prior.d16(),
                      num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(seed), output_type="pt").images
        return images.permute(0, 2, 3, 1).float().cpu()

    def timed(fn):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        return time.perf_counter() - start, result

    with torch.inference_mode():
        _, a = timed(ours)  # warm-up both (allocator, kernels, lazy imports)
        _, b = timed(theirs)
        max_diff = float((a - b).abs().max())
        times: dict[str, list[float]] = {"ours": [], "diffusers": []}
        for repeat in range(args.repeats):
            order = [("ours", ours), ("diffusers", theirs)]
            for name, fn in order if repeat % 2 == 0 else order[::-1]:
                times[name].append(timed(fn)[0])

    med_ours, med_theirs = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    result = {
        "what": "decode_prior vs GlmImagePipeline(prior_token_ids=...) on tiny random components",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "tokens_d32": [token_h, token_w],
        "pixels": [prior.height, prior.width],
        "batch": args.batch,
        "steps": args.steps,
        "guidance": args.guidance,
        "repeats": args.repeats,
        "seconds": times,
        "median_ours_s": med_ours,
        "median_diffusers_s": med_theirs,
        "ratio_ours_over_diffusers": med_ours / med_theirs,
        "max_abs_pixel_diff": max_diff,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    import diffusers
    import transformers

    result["versions"].update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"decode {prior.height}x{prior.width} px x{args.batch}, {args.steps} steps, guidance {args.guidance}, "
          f"{device}: ours {med_ours * 1000:.1f} ms, diffusers {med_theirs * 1000:.1f} ms (medians of "
          f"{args.repeats}), ratio ours/diffusers {med_ours / med_theirs:.3f}, max pixel diff {max_diff:.2e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
