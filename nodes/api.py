"""The one place the nodes import ComfyUI's node API from, and what the running ComfyUI supports.

`comfy_api.v0_0_2` is the versioned API ComfyUI's maintainers advise custom
nodes to import (present from ComfyUI 0.3.6x on, including 0.3.75 and 0.33);
`comfy_api.latest` is the fallback. Features that arrived later (e.g. inputs
marked `advanced`) are feature-detected here, so one code base runs on every
ComfyUI the pack supports.
"""

from __future__ import annotations

import inspect

try:
    from comfy_api.v0_0_2 import ComfyExtension, io
except ImportError:  # pragma: no cover - older layouts
    from comfy_api.latest import ComfyExtension, io

__all__ = ["ComfyExtension", "io", "ADVANCED"]


def _supports_advanced() -> bool:
    try:
        return "advanced" in inspect.signature(io.Int.Input.__init__).parameters
    except (TypeError, ValueError):
        return False


#: Keyword arguments that mark an input as advanced (folded away in the editor) where the running
#: ComfyUI knows the flag; empty on ComfyUI releases that do not (0.3.75), so inputs stay visible.
ADVANCED: dict = {"advanced": True} if _supports_advanced() else {}
