"""`python -m glmimage_core.demo`: the whole pipeline on a tiny GLM-Image with RANDOM weights (no download).

    python -m glmimage_core.demo --out output/demo          text-to-image, then image-to-image from its picture
    python -m glmimage_core.demo generate --prompt "..."    the command line's `generate`, on the tiny model

It lives in the builders' room (the product never imports it): it builds the tiny models, then runs the same
`glmimage_core.cli.run_one` as `python -m glmimage_core generate --model ...`. The pictures are noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..cli import _load_image, _quiet_hf, build_parser, run_one
from ..errors import GlmImageInputError
from .decoder import build_tiny_full_hub_layout
from .models import build_tiny_ar_model

NOTICE = ("Building a tiny GLM-Image model with RANDOM weights (no download): the pipeline runs for real, the "
          "pictures are noise. For the real weights: python -m glmimage_core generate --model ...")


def tiny_model(folder: Path, decode: bool) -> str:
    """A tiny model folder: the full hub layout (AR + decoder) when decoding, else the AR model alone."""
    print(NOTICE)
    return str(build_tiny_full_hub_layout(folder) if decode else build_tiny_ar_model(folder))


def demo(args) -> int:
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="glmimage-demo-") as tmp:
        model = tiny_model(Path(tmp) / "tiny-glm-image", args.decode)
        decoder = model if args.decode else None
        t2i = run_one(model, 'A poster that says "GLM" <sop>8 6<eop>', out, "text_to_image", None, [],
                      args.seed, "fp32", "auto", decoder, args.steps, args.guidance)
        source = _load_image(str(t2i.get("image", t2i["preview"])))
        run_one(model, "Make the sky purple", out, "image_to_image", None, [source], args.seed, "fp32", "auto",
                decoder, args.steps, args.guidance)
    return 0


def generate(argv: list[str]) -> int:
    parser = build_parser("python -m glmimage_core.demo")
    with tempfile.TemporaryDirectory(prefix="glmimage-demo-") as tmp:
        decode = "--no-decode" not in argv
        args = parser.parse_args(["generate", "--model", tiny_model(Path(tmp) / "tiny-glm-image", decode), *argv])
        return args.func(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_hf()
    try:
        if argv[:1] == ["generate"]:
            return generate(argv[1:])
        parser = argparse.ArgumentParser(prog="python -m glmimage_core.demo", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--out", default="output/demo", help="folder for the files written")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                            help="also run the diffusion decoder and write PNGs (default on)")
        parser.add_argument("--steps", type=int, default=4, help="decoder steps")
        parser.add_argument("--guidance", type=float, default=1.5, help="decoder guidance scale")
        return demo(parser.parse_args(argv))
    except GlmImageInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
