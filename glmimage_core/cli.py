"""Command line: sample GLM-Image tokens (and optionally decode them) without ComfyUI.

    python -m glmimage_core generate --model models/glm_image/GLM-Image --prompt "a red fox" --width 1024 --height 1024
    python -m glmimage_core convert --model models/glm_image/GLM-Image --models-dir models --format fp8_e4m3fn

`python -m glmimage_core.demo` runs the same steps on a tiny random model built on the spot (no download),
which proves the pipeline runs but draws noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import GlmImageInputError
from .memory.host import DEVICE_CHOICES
from .shapes import GridShape


def _quiet_hf() -> None:
    """Loading bars from transformers would drown the progress lines this CLI prints."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _save_png(image: torch.Tensor, path: Path) -> Path:
    array = (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def _load_image(path: str) -> torch.Tensor:
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB"))
    return torch.from_numpy(array.astype(np.float32) / 255.0)


def _shape(args) -> GridShape | None:
    if args.shape:
        return GridShape.from_tag(args.shape)
    if args.width or args.height:
        if not (args.width and args.height):
            raise GlmImageInputError("give both --width and --height (pixels), or --shape '<sop>H W<eop>'")
        return GridShape.from_pixels(width=args.width, height=args.height)
    return None


class _PrintProgress:
    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.current, self.last = total, label, 0, 0.0

    def update(self, n: int = 1) -> None:
        self.current += n
        now = time.monotonic()
        if now - self.last > 0.5 or self.current >= self.total:
            self.last = now
            print(f"\r  {self.label}: {self.current}/{self.total}", end="", file=sys.stderr, flush=True)
            if self.current >= self.total:
                print(file=sys.stderr)


def run_one(ar_path: str, prompt: str, out_dir: Path, name: str, shape: GridShape | None, images: list,
            seed: int, dtype: str, device: str, decoder_path: str | None, steps: int, guidance: float) -> dict:
    from .ar.loading import load_ar_model
    from .tokens.grids import extract_prior
    from .ar.generation import generate_tokens
    from .ar.chat_prompt import prepare_inputs
    from .tokens.files import save_prior
    from .tokens.grid_preview import render_grid

    ar = load_ar_model(ar_path, dtype=dtype, device=device)
    inputs = prepare_inputs(ar.processor, prompt, shape=shape, images=images)
    print(f"[{name}] {inputs.mode}: {inputs.shape.describe()}, {len(inputs.sources)} source image(s), "
          f"seed {seed}")
    total = inputs.shape.max_new_tokens(inputs.mode)
    start = time.perf_counter()
    tokens = generate_tokens(ar, inputs, seed=seed, progress=_PrintProgress(total, "tokens"))
    elapsed = time.perf_counter() - start
    prior = extract_prior(tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"tokens": save_prior(prior, out_dir / f"{name}_tokens.safetensors"),
               "preview": _save_png(render_grid(prior.grids, prior.codebook_size, palette=prior.palette)[0],
                                    out_dir / f"{name}_tokens_preview.png")}
    print(f"[{name}] {tokens.sequences.shape[1]} tokens in {elapsed:.2f} s "
          f"({tokens.sequences.shape[1] / max(elapsed, 1e-9):.1f} tokens/s)")
    if decoder_path:
        from .dit.loading import load_decoder
        from .dit.sampling import decode_prior

        decoder = load_decoder(decoder_path, dtype=dtype, device=device)
        sources = [s.pixels for s in inputs.sources]
        pixels = decode_prior(decoder, prior, steps=steps, guidance=guidance, seed=seed,
                              source_images=sources or None, progress=_PrintProgress(steps, "denoising steps"))
        written["image"] = _save_png(pixels[0], out_dir / f"{name}.png")
    for kind, path in written.items():
        print(f"[{name}] wrote {kind}: {path}")
    return written


def _generate(args) -> int:
    images = [_load_image(p) for p in args.image]
    decoder = (args.decoder or args.model) if args.decode else None
    run_one(args.model, args.prompt, Path(args.out), args.name, _shape(args), images, args.seed, args.dtype,
            args.device, decoder, args.steps, args.guidance)
    return 0


def build_parser(prog: str = "python -m glmimage_core") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--out", default="output/glm_image", help="folder for the files written")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                       help="also run the diffusion decoder and write a PNG (default on)")
        p.add_argument("--steps", type=int, default=50, help="decoder steps")
        p.add_argument("--guidance", type=float, default=1.5, help="decoder guidance scale")

    gen = sub.add_parser("generate", help="one prompt, optional source images")
    common(gen)
    gen.add_argument("--model", required=True,
                     help="GLM-Image folder (hub layout or plain transformers); a tiny random model: "
                          "python -m glmimage_core.demo")
    gen.add_argument("--decoder", help="decoder folder, if not the --model folder")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--image", action="append", default=[], help="source image for image-to-image (repeatable)")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--shape", help="grid as <sop>H W<eop> (tokens of 32 px)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    gen.add_argument("--device", default="auto", choices=list(DEVICE_CHOICES))
    gen.add_argument("--name", default="glm_image", help="file name stem")
    gen.set_defaults(func=_generate)

    from .weights.convert_cli import add_parser

    add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_hf()
    try:
        return args.func(args)
    except GlmImageInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
