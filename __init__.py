"""ComfyUI-GLM-Image: GLM-Image (zai-org/GLM-Image) as ComfyUI nodes.

ComfyUI imports this file as a package and calls `comfy_entrypoint`; plain
Python use goes through `glmimage_core`. Nothing is imported at module level,
so tools that import this file outside a package (pytest collecting the repo
root) do not fail.
"""


async def comfy_entrypoint():
    from .glmimage_comfy import comfy_host, gguf_ops, lora_keys
    from .nodes import GlmImageExtension

    comfy_host.install()  # ComfyUI becomes the engine's host (its model manager, folders, progress, cancel)
    lora_keys.install()  # GLM-Image DiT LoRAs through ComfyUI's stock LoRA loaders
    gguf_ops.install()  # GGUF files of the AR model and the DiT through ComfyUI-GGUF (when it is installed)
    return GlmImageExtension()
