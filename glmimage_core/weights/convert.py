"""Hub folder -> one file per part: bf16, or fp8 in ComfyUI's comfy_quant / scaled_fp8 convention.

What goes in each file (the rest of a part's needs travels in its metadata, formats.py's ``glmimage.*`` keys):

- ``ar``: vision_language_encoder/'s weights and config, the processor/ folder's text files (tokenizer, processor
  settings, chat template) and generation_config.json;
- ``dit``: transformer/'s weights and config, the scheduler's settings and the VAE's config (latent statistics);
- ``vae``, ``glyph``: their weights and config (the glyph encoder with the tokenizer/ folder's text files).

``fp8_*`` formats store the AR model's and the DiT's Linear weights in fp8 with a per-tensor scale, except the
layers the pack always keeps in the compute dtype (vram_plan.AR_FP8_KEEP / DIT_FP8_KEEP); the VAE and the glyph
encoder are small and are written in bf16 whatever the format. Other formats (GGUF) join through
`formats.register_writer(name, write)`: `write(plan, temp_target, progress)`; `convert_part` gives it the
`PartPlan` and the temporary path, and publishes the file as it does its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..memory import vram_plan
from ..errors import GlmImageInputError
from . import formats
from .fp8 import CONVENTIONS, FP8_DTYPES, layer_tensors, marker_tensors, quantize
from .writer import check_target, write_file

FORMATS = ("bf16", *FP8_DTYPES)
#: ComfyUI's folder for each part's file: the DiT with diffusion models, the AR model (it reads the prompt) and
#: the glyph encoder with text encoders, the VAE with VAEs.
COMFY_FOLDERS = {"ar": "text_encoders", "dit": "diffusion_models", "vae": "vae", "glyph": "text_encoders"}
_TEXT_SUFFIXES = (".json", ".jinja", ".txt")
_FP8_KEEP = {"ar": vram_plan.AR_FP8_KEEP, "dit": vram_plan.DIT_FP8_KEEP}


@dataclass
class PartPlan:
    part: str
    folder: Path  # the part's hub folder
    fmt: str  # "bf16" | "fp8_e4m3fn" | "fp8_e5m2" | a registered writer
    convention: str | None
    config: dict
    files: dict = field(default_factory=dict)

    def metadata(self) -> dict[str, str]:
        return {formats.META_VERSION: formats.FORMAT_VERSION, formats.META_PART: self.part,
                formats.META_CONFIG: json.dumps(self.config), formats.META_FILES: json.dumps(self.files),
                formats.META_STORAGE: self.fmt if self.part in _FP8_KEEP else "bf16", "format": "pt"}


def default_name(part: str, fmt: str, convention: str | None = None) -> str:
    if fmt.startswith("gguf_") and part in _FP8_KEEP:
        return f"glm_image_{part}_{fmt[5:]}.gguf"
    fmt = "bf16" if fmt.startswith("gguf_") else fmt  # the VAE and glyph encoder of a GGUF set: bf16 files
    label = fmt if fmt == "bf16" or part not in _FP8_KEEP else f"{fmt}_{'scaled' if convention == 'scaled_fp8' else 'comfy'}"
    label = "bf16" if part in ("vae", "glyph") and fmt in FORMATS else label
    return f"glm_image_{part}_{label}.safetensors"


def _text_files(folder: Path, names: list[str] | None = None) -> dict:
    out = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and path.suffix in _TEXT_SUFFIXES and (names is None or path.name in names):
            out[path.name] = path.read_text(encoding="utf-8")
    return out


def plan_part(hub: str | Path, part: str, fmt: str = "bf16", convention: str | None = "comfy_quant") -> PartPlan:
    """What converting `part` of the hub folder `hub` to `fmt` writes (no weights read)."""
    source = formats.inspect(hub)
    if source.container != "hub":
        raise GlmImageInputError(f"convert reads the hub folder of zai-org/GLM-Image; {str(hub)!r} is "
                                 f"{source.describe()}")
    if part not in formats.PARTS:
        raise GlmImageInputError(f"part {part!r} is not one of {list(formats.PARTS)} (or all)")
    if fmt not in FORMATS and fmt not in formats.WRITERS:
        raise GlmImageInputError(f"format {fmt!r} is not one of {[*FORMATS, *formats.WRITERS]}")
    if fmt in FP8_DTYPES and convention not in CONVENTIONS:
        raise GlmImageInputError(f"convention {convention!r} is not one of {list(CONVENTIONS)}")
    root = Path(hub)
    folder = root / formats.HUB_FOLDERS[part]
    config = formats.inspect(folder, want=part).config
    files: dict = {}
    if part == "ar":
        files = {f"processor/{k}": v for k, v in _text_files(root / "processor").items()}
        files.update(_text_files(folder, ["generation_config.json"]))
    elif part == "dit":
        files = {"scheduler/scheduler_config.json": (root / "scheduler" / "scheduler_config.json").read_text(),
                 "vae/config.json": (root / "vae" / "config.json").read_text()}
    elif part == "glyph":
        files = {f"tokenizer/{k}": v for k, v in _text_files(root / "tokenizer").items()}
    return PartPlan(part, folder, fmt, convention if fmt in FP8_DTYPES and part in _FP8_KEEP else None, config,
                    files)


def fp8_layers(plan: PartPlan, keys: list[str]) -> set[str]:
    """The Linear layers of `plan`'s part whose weights an fp8 file stores in fp8 (the loaders' own rule)."""
    if plan.convention is None:
        return set()
    from .lean_load import build_empty

    model = build_empty(lambda: build_model(plan.part, plan.config))
    keep = _FP8_KEEP[plan.part]
    return {name for name, module in model.named_modules() if type(module) is torch.nn.Linear
            and not vram_plan.name_matches(name, keep) and f"{name}.weight" in keys}


def build_model(part: str, config: dict, dtype: torch.dtype | None = None):
    """The part's upstream model from its config (call inside lean_load.build_empty)."""
    if part == "ar":
        from transformers import GlmImageConfig, GlmImageForConditionalGeneration

        return GlmImageForConditionalGeneration._from_config(GlmImageConfig.from_dict(config),
                                                             **({"dtype": dtype} if dtype else {}))
    if part == "glyph":
        from transformers import T5Config, T5EncoderModel

        return T5EncoderModel._from_config(T5Config.from_dict(config), **({"dtype": dtype} if dtype else {}))
    from diffusers import AutoencoderKL, GlmImageTransformer2DModel

    cls = GlmImageTransformer2DModel if part == "dit" else AutoencoderKL
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    return cls.from_config(clean)


def convert_part(hub: str | Path, part: str, out_dir: str | Path, fmt: str = "bf16",
                 convention: str | None = "comfy_quant", name: str | None = None, overwrite: bool = False,
                 progress_for=None, check_cancel=None) -> Path:
    """Write one part of `hub` as one file in `out_dir`; `progress_for(total, part)` makes a progress bar."""
    plan = plan_part(hub, part, fmt, convention)
    target = Path(out_dir) / (name or default_name(part, fmt, plan.convention))
    check_target(target, overwrite)
    if fmt in formats.WRITERS:
        from .writer import _publish

        temp = target.parent / f".{target.name}.partial"
        try:
            formats.WRITERS[fmt](plan, temp, progress_for, check_cancel=check_cancel)
            _publish(temp, target, overwrite)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return target
    with formats.open_tensors(formats.inspect(plan.folder, want=part)) as reader:
        keys = reader.keys()
        quantized = fp8_layers(plan, keys)
        storage = fmt if plan.convention else None
        entries: list = []
        for key, tensor in (marker_tensors(fmt, plan.convention) if storage else {}).items():
            entries.append((key, tensor))
        for key in keys:
            info = reader.info(key)
            float_dtype = torch.bfloat16 if info.dtype in ("F32", "F16", "BF16") else info.dtype
            layer = key[:-len(".weight")]
            if storage and key.endswith(".weight") and layer in quantized:
                fake = layer_tensors(layer, torch.empty(info.shape, dtype=FP8_DTYPES[fmt]), torch.ones(()),
                                     fmt, plan.convention)
                entries += [(k, (v.dtype, tuple(v.shape))) for k, v in fake.items()]
            else:
                entries.append((key, (float_dtype, info.shape)))
        made: dict = {}

        def produce(key: str) -> torch.Tensor:
            if key in made:
                return made.pop(key)
            if key == "scaled_fp8":
                return marker_tensors(fmt, plan.convention)["scaled_fp8"]
            layer = key[:-len(".weight")]
            if storage and key.endswith(".weight") and layer in quantized:
                q, scale = quantize(reader.read(f"{layer}.weight"), FP8_DTYPES[fmt])
                made.update(layer_tensors(layer, q, scale, fmt, plan.convention))
                return made.pop(key)
            tensor = reader.read(key)
            return tensor.to(torch.bfloat16) if tensor.is_floating_point() and tensor.element_size() > 1 else tensor

        progress = progress_for(len(entries), part) if progress_for else None
        return write_file(target, entries, produce, plan.metadata(), overwrite, progress, check_cancel)


def convert(hub: str | Path, parts: list[str], out_dirs: dict[str, Path], fmt: str = "bf16",
            convention: str | None = "comfy_quant", overwrite: bool = False, progress_for=None,
            check_cancel=None) -> list[Path]:
    """Every part in `parts` to `out_dirs[part]`; stops before writing anything when a target exists, except,
    when several parts are asked for, the VAE's and glyph encoder's bf16 files, which every format shares: an
    existing one is kept as it is."""
    plans = [(part, Path(out_dirs[part]) / default_name(part, fmt, plan_part(hub, part, fmt, convention).convention))
             for part in parts]
    shared = lambda part, target: (len(parts) > 1 and part not in _FP8_KEEP  # noqa: E731
                                   and target.exists() and not overwrite)
    for part, target in plans:
        if not shared(part, target):
            check_target(target, overwrite)
    part_fmt = lambda part: "bf16" if fmt in formats.WRITERS and part not in _FP8_KEEP else fmt  # noqa: E731
    return [target if shared(part, target) else
            convert_part(hub, part, target.parent, part_fmt(part), convention, target.name, overwrite, progress_for,
                         check_cancel)
            for part, target in plans]
