"""GGUF weights of the AR model and the DiT through ComfyUI-GGUF (city96): its loader, its layers, its patcher.

ComfyUI users run GGUF models through ComfyUI-GGUF: `loader.gguf_sd_loader` reads a file
into `GGMLTensor`s (memory-mapped, still quantized) and `ops.GGMLOps` layers dequantise
them on every forward, on whatever device ComfyUI put them. The pack uses that seam
rather than a copy of it. `install()` plugs it into the formats seam
(glmimage_core/weights/gguf_format.py): the part is built with empty weights and filled
tensor by tensor (weights/lean_load) from `gguf_sd_loader`'s tensors, the quantized
Linear weights as they are (memory-mapped), every other tensor (norms, biases,
embeddings, convolutions, the Linears the writer kept) dequantised once to the model's
dtype; then the Linears holding quantized weights become `GGMLOps.Linear` (the same class
swap `cast_layers.make_castable` does for ComfyUI's own operations), and the rest of the
pack's preparation (`prepare_ar_model` / `prepare_dit`: ComfyUI cast layers, the
embedding table in RAM) runs unchanged.

ComfyUI-GGUF is found where ComfyUI loaded it (any custom_nodes folder name), or in a
custom_nodes folder or on sys.path when ComfyUI has not imported it yet; without it the
message says how to install it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from ..glmimage_core.errors import GlmImageInputError
from ..glmimage_core.weights import formats
from ..glmimage_core.weights.cast_layers import CastSummary
from ..glmimage_core.weights.gguf_files import ARCHITECTURES
from ..glmimage_core.weights.gguf_format import set_tensor_source

INSTALL_HINT = ("GGUF files load through the custom node pack ComfyUI-GGUF, which is not installed: install "
                "\"ComfyUI-GGUF\" by city96 with ComfyUI-Manager, or run `git clone "
                "https://github.com/city96/ComfyUI-GGUF` in ComfyUI/custom_nodes and `pip install gguf` in "
                "ComfyUI's Python; then restart ComfyUI")
_MODULES = ("dequant", "ops", "loader")
log = logging.getLogger("GLM-Image")


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


def plain(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """A GGUF tensor kept in F32 / F16 / BF16, dequantised (or cast) by ComfyUI-GGUF to `dtype`, plain."""
    gg = comfyui_gguf()
    if getattr(getattr(tensor, "tensor_type", None), "name", None) == "BF16":
        # The stored bits are the bf16 values: one copy out of the mapped file, instead of ComfyUI-GGUF's
        # int32 / float32 round trip (4x the tensor in anonymous memory for the 128 MB prior-token table).
        value = tensor.as_subclass(torch.Tensor).view(torch.bfloat16).reshape(tensor.tensor_shape)
        return value.clone() if dtype in (None, torch.bfloat16) else value.to(dtype)
    value = gg.dequant.dequantize_tensor(tensor, dtype or torch.float32)
    if isinstance(value, gg.ops.GGMLTensor):
        value = value.as_subclass(torch.Tensor)
    return value.detach().clone() if value.data_ptr() == tensor.data_ptr() else value.detach()


def ggml_linears(model: torch.nn.Module, operations=None) -> CastSummary:
    """The formats seam's layer hook for GGUF: every `nn.Linear` holding a quantized weight becomes
    `GGMLOps.Linear` (in place; its parameters unchanged), which dequantises it on each forward. The pack's
    own preparation then leaves these layers as they are (they are ComfyUI cast layers already)."""
    gg = comfyui_gguf()
    summary = CastSummary()
    for module in model.modules():
        if type(module) is torch.nn.Linear and gg.dequant.is_quantized(module.weight):
            module.__class__ = gg.ops.GGMLOps.Linear
            summary.swapped[gg.ops.GGMLOps.Linear.__name__] += 1
    log.info("GLM-Image: %d quantized Linear layers of %s run as ComfyUI-GGUF's GGMLOps.Linear",
             summary.swapped[gg.ops.GGMLOps.Linear.__name__], type(model).__name__)
    return summary


def is_gguf_model(module: torch.nn.Module) -> bool:
    """Whether `module` holds ComfyUI-GGUF layers with quantized weights (it then wants the GGUF patcher)."""
    found = _loaded()
    if found is None:
        return False
    return any(isinstance(m, found.ops.GGMLLayer) and found.dequant.is_quantized(getattr(m, "weight", None))
               for m in module.modules())


def install() -> None:
    """Plug ComfyUI-GGUF into the formats seam: GGUF files read by its loader, quantized Linears as its layers.
    Called when ComfyUI loads the pack; ComfyUI-GGUF itself is looked up only when a GGUF file is loaded."""
    set_tensor_source(read_state_dict, plain)
    formats.register_layers("gguf", ggml_linears)
