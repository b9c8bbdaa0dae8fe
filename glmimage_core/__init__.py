"""The GLM-Image engine: loading, shapes, prompts, token generation, extraction, decoding.

No ComfyUI import at module level: usable from plain Python and the command
line (`python -m glmimage_core`). Where ComfyUI is present, `runtime` uses its
services (devices, progress, cancel).
"""

from .errors import GlmImageInputError
from .payloads import GridShape, PriorTokens

__all__ = ["GlmImageInputError", "GridShape", "PriorTokens"]
