"""What the AR and DiT loaders share to load a part from a `WeightSource` lean: the model, its text files, and
which `weight_dtype` a file's storage means.

- `lean_model`: the part's upstream class built on `meta` from the source's config and filled tensor by tensor
  (lean_load), fp8 files as stored, bf16 ones rounded to `store` as they are read;
- `text_folder`: the text files a single file carries (tokenizer, processor settings, chat template) written to
  a private temporary folder that transformers' `from_pretrained` reads (only names the pack knows, text only);
- `file_weight_dtype`: an fp8 file is kept in its own fp8; asking for another storage is refused.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable

import torch

from ..errors import GlmImageInputError
from . import formats
from .fp8 import quant_layers
from .lean_load import FillReport, build_empty, fill

_KEEP_FP32 = {"glyph": ("wo",)}  # T5's `_keep_in_fp32_modules` (fp16 only, as transformers does)


def lean_model(source: formats.WeightSource, part: str, dtype: torch.dtype, store: torch.dtype | None = None,
               keep: Callable[[str], bool] = lambda name: False, attention: str | None = None,
               progress=None) -> tuple[torch.nn.Module, FillReport]:
    """`source`'s part built from its config and filled without ever holding it wider than it is kept."""
    from .convert import build_model

    config = source.config
    if part == "ar" and attention:
        config = {**config, "_attn_implementation": attention}
    model = build_empty(lambda: build_model(part, config, dtype))
    if part == "ar" and attention:
        model.set_attn_implementation(attention)
    keep_fp32 = _KEEP_FP32.get(part, ()) if dtype == torch.float16 else ()
    with formats.open_tensors(source) as reader:
        quant = quant_layers(reader, source.convention) if source.storage.startswith("fp8") else None
        report = fill(model, reader, source.describe(), dtype, store, keep, quant, keep_fp32, progress)
    hook = formats.layer_hook(source.storage)
    if hook is not None:  # e.g. GGUF: its layer classes, before the loader's prepare (which leaves them alone)
        from ..memory.host import host

        hook(model, host().cast_ops)
    if report.unexpected:
        raise GlmImageInputError(f"{source.describe()} has {len(report.unexpected)} tensor(s) GLM-Image's "
                                 f"{formats.PART_NAMES[part]} does not, e.g. {report.unexpected[:3]}: another "
                                 "model's weights or another version's; convert it again")
    return model.eval().requires_grad_(False), report


def text_folder(source: formats.WeightSource, prefix: str = "") -> Path:
    """The source's text files under `prefix` (e.g. "processor/") in a folder of their own, written once per
    content; names with other folders in them, absolute ones or '..' are refused."""
    chosen = {name[len(prefix):]: text for name, text in source.files.items() if name.startswith(prefix)}
    if not chosen:
        raise GlmImageInputError(f"{source.describe()} carries no {prefix or 'text'} files in its metadata; "
                                 "convert it again from the hub folder")
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "glmimage_files" / digest
    for name, text in chosen.items():
        pure = PurePosixPath(name)
        if pure.is_absolute() or len(pure.parts) != 1 or name in (".", "..") or not isinstance(text, str):
            raise GlmImageInputError(f"{source.describe()}: metadata file name {name!r} is not a plain file name")
        target = folder / name
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            folder.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    return folder


def file_json(source: formats.WeightSource, name: str) -> dict:
    try:
        return json.loads(source.files[name])
    except (KeyError, ValueError) as err:
        raise GlmImageInputError(f"{source.describe()} lacks {name} in its metadata ({err}); convert it again "
                                 "from the hub folder") from err


def file_weight_dtype(source: formats.WeightSource, weight_dtype: str) -> str:
    """The `weight_dtype` a source's weights are kept in: an fp8 file's own; plain files follow the input; other
    storages (GGUF) keep their own and take `default` only."""
    if source.storage.startswith(formats.NON_FP8_STORED):
        if weight_dtype != "default":
            raise GlmImageInputError(f"weight_dtype {weight_dtype}: {source.path.name!r} is stored as "
                                     f"{source.storage} and is kept so; choose weight_dtype default")
        return "default"
    if not source.storage.startswith("fp8"):
        return weight_dtype
    if weight_dtype not in ("default", source.storage):
        raise GlmImageInputError(f"weight_dtype {weight_dtype}: {source.path.name!r} is stored in {source.storage} "
                                 "and is kept so; choose weight_dtype default (or a bf16 file)")
    return source.storage
