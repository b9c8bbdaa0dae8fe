"""`python -m glmimage_core convert`: the hub folder -> one file per part, in ComfyUI's model folders.

    python -m glmimage_core convert --model models/glm_image/GLM-Image --models-dir ComfyUI/models \\
        --format fp8_e4m3fn                      # every part; --part dit for one; --convention scaled_fp8

Files go to <models-dir>/diffusion_models/ (DiT), text_encoders/ (AR model, glyph encoder) and vae/ (convert.py's
COMFY_FOLDERS), or all to --out; an existing file is never replaced unless --overwrite is given.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import convert, formats


class _Bar:
    """A one-line progress bar on stdout: tensors written of the part's total."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.current, self.last = total, label, 0, 0.0

    def update(self, n: int = 1) -> None:
        self.current += n
        now = time.monotonic()
        if now - self.last > 0.5 or self.current >= self.total:
            self.last = now
            filled = int(30 * self.current / max(self.total, 1))
            print(f"\r  {self.label} [{'#' * filled}{'.' * (30 - filled)}] {100 * self.current // max(self.total, 1)}%"
                  f" ({self.current}/{self.total} tensors)", end="", flush=True)
            if self.current >= self.total:
                print()


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="hub folder -> single bf16 / fp8 files per part (ComfyUI's folders)")
    p.add_argument("--model", required=True, help="the zai-org/GLM-Image hub folder")
    p.add_argument("--part", action="append", choices=[*formats.PARTS, "all"],
                   help="ar, dit, vae, glyph or all (default; repeatable)")
    p.add_argument("--format", default="bf16", choices=[*convert.FORMATS, *formats.WRITERS],
                   help="bf16, or fp8 Linear weights with a per-tensor scale (the AR model and the DiT)")
    p.add_argument("--convention", default="comfy_quant", choices=["comfy_quant", "scaled_fp8"],
                   help="fp8 layout: ComfyUI 0.33's per-layer comfy_quant, or the older scaled_fp8")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--models-dir", help="ComfyUI's models/ folder: each part goes to its own subfolder")
    where.add_argument("--out", help="one folder for every file")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same name")
    p.set_defaults(func=run)


def run(args) -> int:
    parts = list(formats.PARTS) if not args.part or "all" in args.part else list(dict.fromkeys(args.part))
    base = Path(args.models_dir or "models")
    out_dirs = {part: Path(args.out) if args.out else base / convert.COMFY_FOLDERS[part] for part in parts}
    start = time.perf_counter()
    written = convert.convert(args.model, parts, out_dirs, args.format, args.convention, args.overwrite, _Bar)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)")
    print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
