"""GLM-Image as native ComfyUI models: the DiT as a `MODEL`, the VAE as a `VAE`, tokens as `CONDITIONING`.

Unlike `glmimage_core` (the engine, usable without ComfyUI), these modules build
on ComfyUI's own classes (`comfy.model_base.BaseModel`, `comfy.sd.VAE`,
`comfy.conds`, `comfy.latent_formats`) and import ComfyUI at module level: only
the nodes (inside ComfyUI) and tests that start ComfyUI import them. The models
themselves stay diffusers' classes, loaded by `glmimage_core.dit.loading`;
here they are adapted, never reimplemented.
"""
