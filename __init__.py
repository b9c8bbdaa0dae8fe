"""ComfyUI-GLM-Image: GLM-Image (zai-org/GLM-Image) as ComfyUI nodes.

ComfyUI imports this file; plain Python use goes through `glmimage_core`.
"""

from .glmimage_core.model_folders import register_comfy_folder


async def comfy_entrypoint():
    from .nodes import GlmImageExtension

    register_comfy_folder()
    return GlmImageExtension()
