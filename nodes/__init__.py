"""ComfyUI nodes (V3 schema) over `glmimage_core`. Each node is a thin call into the core."""

from typing_extensions import override

from .api import ComfyExtension, io

from .ar_lora import GLMImageARLoraLoader
from .conditioning import GLMImageConditioning, GLMImageScheduler
from .decode import GLMImageDecode
from .decoder_loader import GLMImageDecoderLoader
from .extract import GLMImageExtractTokens
from .generate import GLMImageGenerateTokens
from .generate_server import GLMImageGenerateTokensServer
from .ar_loader import GLMImageARLoader
from .ar_processor_loader import GLMImageARProcessorLoader
from .lora import GLMImageLoraLoader
from .native_loaders import GLMImageDiTLoader, GLMImageGlyphEncoderLoader, GLMImageVAELoader
from .preview import GLMImagePreviewTokens
from .prompt import GLMImagePrompt
from .save_checkpoint import GLMImageSaveCheckpoint
from .shape import GLMImageShape
from .token_io import GLMImageLoadTokens, GLMImageSaveTokens

NODES: list[type[io.ComfyNode]] = [
    GLMImageARLoader,
    GLMImageShape,
    GLMImagePrompt,
    GLMImageGenerateTokens,
    GLMImageGenerateTokensServer,
    GLMImageARProcessorLoader,
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
    GLMImageARLoraLoader,
    GLMImageSaveCheckpoint,
]


class GlmImageExtension(ComfyExtension):
    """The pack's nodes. The engine's ComfyUI host (with the models folder) and the LoRA keys are installed by
    `comfy_entrypoint` (the package's __init__.py): ComfyUI 0.3.75 never calls `on_load`, 0.33.0 calls it after
    the entrypoint."""

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
