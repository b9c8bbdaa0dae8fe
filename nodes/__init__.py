"""ComfyUI nodes (V3 schema) over `glmimage_core`. Each node is a thin call into the core."""

from typing_extensions import override

from .api import ComfyExtension, io

from ..glmimage_comfy import lora_keys
from ..glmimage_core.model_folders import register_comfy_folder
from .decoder import GLMImageDecode, GLMImageDecoderLoader
from .extract import GLMImageExtractTokens
from .generate import GLMImageGenerateTokens
from .loader import GLMImageARLoader
from .lora import GLMImageLoraLoader
from .native import (GLMImageConditioning, GLMImageDiTLoader, GLMImageGlyphEncoderLoader, GLMImageScheduler,
                     GLMImageVAELoader)
from .preview import GLMImagePreviewTokens
from .prompt import GLMImagePrompt
from .shape import GLMImageShape
from .token_files import GLMImageLoadTokens, GLMImageSaveTokens

NODES: list[type[io.ComfyNode]] = [
    GLMImageARLoader,
    GLMImageShape,
    GLMImagePrompt,
    GLMImageGenerateTokens,
    GLMImageExtractTokens,
    GLMImagePreviewTokens,
    GLMImageSaveTokens,
    GLMImageLoadTokens,
    GLMImageDecoderLoader,
    GLMImageDecode,
    GLMImageDiTLoader,
    GLMImageVAELoader,
    GLMImageGlyphEncoderLoader,
    GLMImageConditioning,
    GLMImageScheduler,
    GLMImageLoraLoader,
]


class GlmImageExtension(ComfyExtension):
    @override
    async def on_load(self) -> None:
        register_comfy_folder()
        lora_keys.install()

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
