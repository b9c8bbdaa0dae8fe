"""ComfyUI's services when ComfyUI is there, plain fallbacks when it is not.

The core never imports ComfyUI at module level; each helper here tries the
ComfyUI module at call time and falls back to a standalone behaviour, so the
same code runs inside a ComfyUI graph, in tests and on the command line.
"""

from __future__ import annotations

import sys
from typing import Protocol

import torch

from ..errors import GlmImageInputError

#: The loaders' `device` choices.
DEVICE_CHOICES = ("auto", "gpu", "cpu")


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...


def _comfy_module(name: str):
    """Return an already-importable ComfyUI module, or None outside ComfyUI.

    Only looks ComfyUI up when its top-level package is importable; a plain
    Python process never pays for a failed import of a big tree.
    """
    if "comfy" not in sys.modules and "comfy.model_management" not in sys.modules:
        try:
            import comfy  # noqa: F401
        except ImportError:
            return None
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


class _NullProgress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0

    def update(self, n: int = 1) -> None:
        self.current += n


def progress_bar(total: int) -> Progress:
    """A ComfyUI progress bar (shown on the node) or a silent counter."""
    utils = _comfy_module("comfy.utils")
    if utils is not None:
        return utils.ProgressBar(total)
    return _NullProgress(total)


def preview_size(default: int = 512) -> int:
    """Longest side of live preview pictures: ComfyUI's `--preview-size` (512 unless set), else `default`."""
    cli_args = _comfy_module("comfy.cli_args")
    size = getattr(getattr(cli_args, "args", None), "preview_size", None)
    return int(size) if isinstance(size, int) and size > 0 else default


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed cancel."""
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def torch_device(choice: str = "auto") -> torch.device:
    """Resolve a device choice (auto/gpu/cpu) to a torch device.

    Inside ComfyUI "auto"/"gpu" follow ComfyUI's own device choice (which obeys
    --cpu, --directml...); outside it, CUDA then MPS then CPU.
    """
    if choice not in DEVICE_CHOICES:  # ComfyUI 0.3.75 does not check a V3 combo's value
        raise GlmImageInputError(f"device {choice!r} is not one of {list(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu")
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    if choice == "gpu":
        raise RuntimeError("device=gpu was chosen but no GPU is available; choose auto or cpu")
    return torch.device("cpu")


def offload_device() -> torch.device:
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        return mm.unet_offload_device()
    return torch.device("cpu")


def free_memory_cache() -> None:
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()



def free_vram(device: torch.device, patcher=None) -> int | None:
    """Bytes free on `device` for new tensors (ComfyUI's own count inside ComfyUI), or None for the CPU,
    where RAM is treated as plenty (nothing is tiled or split on its account).

    Inside ComfyUI it is what ComfyUI can give: `patcher.get_free_memory(device)` where the patcher has it
    (0.33+: it also counts the VRAM that dynamic-VRAM models hand back, which
    `model_management.get_free_memory` leaves out), else `model_management.get_free_memory`."""
    if device.type == "cpu":
        return None
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        own = getattr(patcher, "get_free_memory", None)
        return int(own(device) if callable(own) else mm.get_free_memory(device))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None
