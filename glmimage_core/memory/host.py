"""The host seam: everything the engine asks of the program it runs in, behind one small protocol.

The engine runs inside ComfyUI (whose model manager places the models, whose
cast layers stream and fp8-store them, whose progress bar and cancel button the
nodes show) and in plain Python (command line, scripts, benchmarks, tests). It
never looks for ComfyUI itself: it calls `host()`, and whoever runs it installs
the host it wants (`install_host`). `PlainHost`, the default, is plain torch:
`.to(device)`, silent progress, no cancel, no extra folders. ComfyUI's host is
`glmimage_comfy.comfy_host.ComfyHost`, installed by the pack's entry point.

The host is read once per call, not once per token: its methods are plain
attribute lookups, so the seam costs nothing measurable per sampled token
(bench/bench_seam.py keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ..errors import GlmImageInputError
from . import model_cache

#: The loaders' `device` choices.
DEVICE_CHOICES = ("auto", "gpu", "cpu")


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...


@dataclass(frozen=True)
class CastOps:
    """The layer classes a host gives models (cast_layers.make_castable): `operations` for every weight-holding
    layer, `fp8_operations` for Linear weights stored in fp8 (None: this host cannot keep fp8 weights)."""

    operations: object
    fp8_operations: object | None = None


@dataclass(frozen=True)
class Room:
    """What a host can free on a device for one model: `free` bytes (the model's own resident bytes counted),
    of which `reserve` it keeps for itself, and `needed` = the model's weights + the run's working memory."""

    free: int
    reserve: int
    needed: int


class Host(Protocol):
    """What the engine needs from its host. Models are named by their `torch.nn.Module`."""

    #: Layer classes for the models (None: they keep the upstream layers and compute in their own dtype).
    cast_ops: CastOps | None

    # devices
    def compute_device(self, choice: str) -> torch.device:
        """The device for "auto" or "gpu" ("cpu" never reaches the host)."""
    def offload_device(self) -> torch.device: ...
    def park_device(self, device: torch.device) -> torch.device:
        """Where a freshly loaded model waits for its first run on `device`."""

    # placement
    def make_room(self, module: torch.nn.Module, device: torch.device, memory_required: int) -> Room | None:
        """Free what can be freed for `module` on `device`; None where the host keeps no accounting."""
    def place(self, module: torch.nn.Module, device: torch.device, memory_required: int = 0,
              max_resident: int | None = None, pinned: Sequence[str] = (), patches: tuple = ()) -> None:
        """Make `module` ready to compute on `device` (at most `max_resident` weight bytes resident), with
        `patches` ((adapter, strength) pairs, e.g. AR LoRAs) applied to its weights for this run and taken off
        again when it is placed without them; the module's own weights are never changed for good."""
    def is_streaming(self, module: torch.nn.Module) -> bool: ...
    def release(self, module: torch.nn.Module, device: torch.device) -> None:
        """Take `module` off `device` now (the next model gets the memory)."""
    def forget(self, module: torch.nn.Module) -> None:
        """`module` is dropped by the engine: the host lets go of it too."""
    def free_memory(self, device: torch.device, module: torch.nn.Module | None = None) -> int | None:
        """Bytes free on `device` for new tensors, or None for the CPU (RAM counts as plenty)."""
    def empty_cache(self) -> None: ...

    # a run
    def progress_bar(self, total: int) -> Progress: ...
    def check_interrupted(self) -> None:
        """Raise the host's interrupt when the user cancelled; called once per sampled token."""
    def preview_size(self, default: int = 512) -> int: ...

    # folders
    def model_folders(self, name: str) -> list[str]:
        """Folders the host registers for models of kind `name` (e.g. glm_image)."""
    def token_folders(self) -> dict[str, str] | None:
        """input/output/temp folders token files may be read from (None: any path the user names)."""


class NullProgress:
    """A silent progress counter."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0

    def update(self, n: int = 1) -> None:
        self.current += n


def _first_device(module: torch.nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    return None


class PlainHost:
    """Plain torch: models move with `.to(device)`, progress is silent, nothing cancels, no folders."""

    cast_ops: CastOps | None = None

    def compute_device(self, choice: str) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        if choice == "gpu":
            raise RuntimeError("device=gpu was chosen but no GPU is available; choose auto or cpu")
        return torch.device("cpu")

    def offload_device(self) -> torch.device:
        return torch.device("cpu")

    def park_device(self, device: torch.device) -> torch.device:
        return device

    def make_room(self, module, device, memory_required) -> Room | None:
        return None

    def place(self, module, device, memory_required=0, max_resident=None, pinned=(), patches=()) -> None:
        if patches:
            from ..errors import GlmImageInputError

            raise GlmImageInputError("AR LoRAs are applied by ComfyUI's model patcher: run 'Load GLM-Image AR "
                                     "LoRA' inside ComfyUI")
        if _first_device(module) != device:
            module.to(device)

    def is_streaming(self, module) -> bool:
        return False

    def release(self, module, device) -> None:
        if device.type != "cpu":
            module.to(self.offload_device())
            self.empty_cache()

    def forget(self, module) -> None:
        pass

    def free_memory(self, device, module=None) -> int | None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        return None

    def empty_cache(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def progress_bar(self, total: int) -> Progress:
        return NullProgress(total)

    def check_interrupted(self) -> None:
        pass

    def preview_size(self, default: int = 512) -> int:
        return default

    def model_folders(self, name: str) -> list[str]:
        return []

    def token_folders(self) -> dict[str, str] | None:
        return None


_HOST: Host = PlainHost()


def host() -> Host:
    """The installed host (PlainHost until someone installs another)."""
    return _HOST


def install_host(new: Host) -> Host:
    """Make `new` the engine's host; returns the one it replaces.

    Models loaded for another host were prepared for it (its layers, its placement), so the model caches are
    emptied first, through the old host; the next load prepares them for the new one."""
    global _HOST
    old = _HOST
    if new is not old:
        model_cache.clear_all()
        _HOST = new
    return old


def fp8_storage_possible() -> bool:
    """Whether the host has cast layers for Linear weights stored in fp8 (ComfyUI's; plain torch has none)."""
    ops = _HOST.cast_ops
    return ops is not None and ops.fp8_operations is not None


def torch_device(choice: str = "auto") -> torch.device:
    """Resolve a device choice (auto/gpu/cpu) to a torch device: "cpu" is the CPU, the others are the host's
    (ComfyUI's own device choice inside ComfyUI, which obeys --cpu, --directml...; else CUDA, MPS, CPU)."""
    if choice not in DEVICE_CHOICES:  # ComfyUI 0.3.75 does not check a V3 combo's value
        raise GlmImageInputError(f"device {choice!r} is not one of {list(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu")
    return _HOST.compute_device(choice)
