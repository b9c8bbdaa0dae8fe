"""GGUF weights of the AR model and the DiT through ComfyUI-GGUF (city96): its loader, its layers, its patcher.

ComfyUI users run GGUF models through ComfyUI-GGUF: `loader.gguf_sd_loader` reads a file
into `GGMLTensor`s (memory-mapped, still quantized) and `ops.GGMLOps` layers dequantise
them on every forward, on whatever device ComfyUI put them. The pack uses that seam
rather than a copy of it: the upstream model (transformers / diffusers) is built with
empty weights, its `nn.Linear` layers become `GGMLOps.Linear` (the same class swap
`cast_layers.make_castable` does for ComfyUI's own operations), the file's quantized
Linear weights are assigned to them as they are, and every other tensor (norms, biases,
embeddings, convolutions, the Linears the writer kept) is dequantised once to the
model's dtype, so the rest of the pack's preparation (`prepare_ar_model` /
`prepare_dit`: ComfyUI cast layers, the embedding table in RAM) runs unchanged.

ComfyUI-GGUF is found where ComfyUI loaded it (any custom_nodes folder name), or in a
custom_nodes folder or on sys.path when ComfyUI has not imported it yet; without it the
message says how to install it.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.weights.gguf_files import ARCHITECTURES

INSTALL_HINT = ("GGUF files load through the custom node pack ComfyUI-GGUF, which is not installed: install "
                "\"ComfyUI-GGUF\" by city96 with ComfyUI-Manager, or run `git clone "
                "https://github.com/city96/ComfyUI-GGUF` in ComfyUI/custom_nodes and `pip install gguf` in "
                "ComfyUI's Python; then restart ComfyUI")
_MODULES = ("dequant", "ops", "loader")


@dataclass(frozen=True)
class ComfyGGUF:
    """The parts of ComfyUI-GGUF the pack uses (`nodes` only where ComfyUI itself loaded the pack: its patcher)."""

    ops: types.ModuleType
    loader: types.ModuleType
    dequant: types.ModuleType
    nodes: types.ModuleType | None

    @property
    def patcher_class(self):
        """ComfyUI-GGUF's `GGUFModelPatcher` (LoRA patches kept beside quantized weights), or None."""
        return getattr(self.nodes, "GGUFModelPatcher", None)


def _loaded() -> ComfyGGUF | None:
    """ComfyUI-GGUF as ComfyUI (or an earlier call) imported it: a package with ops.GGMLOps and loader.gguf_sd_loader."""
    for name, module in list(sys.modules.items()):
        if not name.endswith(".ops") or not hasattr(module, "GGMLOps"):
            continue
        package = name[: -len(".ops")]
        loader = sys.modules.get(f"{package}.loader")
        if loader is not None and hasattr(loader, "gguf_sd_loader"):
            return ComfyGGUF(module, loader, sys.modules[f"{package}.dequant"], sys.modules.get(f"{package}.nodes"))
    return None


def _candidate_folders() -> list[Path]:
    roots = []
    folder_paths = sys.modules.get("folder_paths")
    if folder_paths is not None:
        try:
            roots += [Path(p) for p in folder_paths.get_folder_paths("custom_nodes")]
        except (KeyError, AttributeError):
            pass
    roots += [Path(p) for p in sys.path if p and os.path.isdir(p)]
    found = []
    for root in roots:
        try:
            children = sorted(root.iterdir())
        except OSError:
            continue
        for child in children:
            if ("gguf" in child.name.lower() and all((child / f"{m}.py").is_file() for m in _MODULES)
                    and "class GGMLOps" in (child / "ops.py").read_text(encoding="utf-8", errors="replace")):
                found.append(child)
    return found


def _import_from(folder: Path) -> ComfyGGUF:
    """Import ComfyUI-GGUF's dequant, ops and loader from `folder` as a package, without its node module
    (which needs a running ComfyUI's `nodes`)."""
    package = "glmimage_comfyui_gguf"
    if package not in sys.modules:
        module = types.ModuleType(package)
        module.__path__ = [str(folder)]
        module.__file__ = str(folder / "__init__.py")
        sys.modules[package] = module
    parts = {name: importlib.import_module(f"{package}.{name}") for name in _MODULES}
    return ComfyGGUF(parts["ops"], parts["loader"], parts["dequant"], None)


def comfyui_gguf() -> ComfyGGUF:
    """ComfyUI-GGUF's modules, or `GlmImageInputError` with how to install it (and the package gguf)."""
    found = _loaded()
    if found is not None:
        return found
    folders = _candidate_folders()
    if not folders:
        raise GlmImageInputError(INSTALL_HINT)
    try:
        return _import_from(folders[0])
    except ImportError as err:
        missing = "the package gguf (pip install gguf in ComfyUI's Python)" if "gguf" in str(err) else str(err)
        raise GlmImageInputError(f"ComfyUI-GGUF in {str(folders[0])!r} could not be imported: it needs "
                                 f"{missing}") from err


def read_state_dict(path: str | os.PathLike, part: str) -> dict:
    """A GGUF file of `part` ('ar' or 'dit') read by ComfyUI-GGUF's `gguf_sd_loader` (memory-mapped GGMLTensors).

    The loader accepts only architectures it knows, so the pack's two are added to its list first
    (its own Unet loader then reads them too, and says it cannot detect the model, which is right)."""
    gg = comfyui_gguf()
    gg.loader.IMG_ARCH_LIST.update(ARCHITECTURES.values())
    try:
        state_dict, arch = gg.loader.gguf_sd_loader(str(path), handle_prefix=None, return_arch=True)
    except ValueError as err:
        raise GlmImageInputError(f"{str(path)!r} is not a GGUF file ComfyUI-GGUF can read ({err})") from err
    if arch != ARCHITECTURES[part]:
        raise GlmImageInputError(f"{str(path)!r} holds a {arch!r} model, not GLM-Image's {part.upper()} "
                                 f"({ARCHITECTURES[part]!r})")
    return state_dict


def _plain(tensor: torch.Tensor, gg: ComfyGGUF, dtype: torch.dtype) -> torch.Tensor:
    """A GGUF tensor dequantised (or just cast) to `dtype`, as a plain tensor with its own memory."""
    value = gg.dequant.dequantize_tensor(tensor, dtype)
    if isinstance(value, gg.ops.GGMLTensor):
        value = value.as_subclass(torch.Tensor)
    return value.detach().clone() if value.data_ptr() == tensor.data_ptr() else value.detach()


def ggml_linears(model: torch.nn.Module, gg: ComfyGGUF) -> int:
    """Give every `nn.Linear` of `model` the class `GGMLOps.Linear` (in place; parameters unchanged)."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = gg.ops.GGMLOps.Linear
            swapped += 1
    return swapped


def load_gguf_module(path: str | os.PathLike, part: str, build_empty: Callable[[], torch.nn.Module],
                     dtype: torch.dtype) -> torch.nn.Module:
    """The model `build_empty()` makes (parameters on the meta device), filled from a GGUF file through
    ComfyUI-GGUF: quantized Linear weights stay quantized in `GGMLOps.Linear` layers, the rest in `dtype`."""
    gg = comfyui_gguf()
    state_dict = read_state_dict(path, part)
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, not stored
        model = build_empty()
    linear = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for key, tensor in state_dict.items():
        if not (key in linear and gg.dequant.is_quantized(tensor)):
            state_dict[key] = _plain(tensor, gg, dtype)
    ggml_linears(model, gg)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [key for key in missing if not _tied(model, key)]
    if missing or unexpected:
        raise GlmImageInputError(f"{str(path)!r} does not fit GLM-Image's {part.upper()} of its config: "
                                 f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                 f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    still_empty = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if still_empty:
        raise GlmImageInputError(f"{str(path)!r} left {still_empty[:5]} of GLM-Image's {part.upper()} empty")
    return model.eval().requires_grad_(False)


def _tied(model: torch.nn.Module, key: str) -> bool:
    """Whether `key` is a weight tied to another one (transformers' tie_word_embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied
