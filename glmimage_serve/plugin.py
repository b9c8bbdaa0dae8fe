"""Entry point `glmimage_serve = glmimage_serve.plugin:register` in the groups `vllm_omni.general_plugins`
AND `vllm.general_plugins`.

vLLM-Omni loads its group in the API front, the orchestrator and the workers; no flag names a pipeline
module, so the registration must come through here. The engine-core process (vLLM's scheduler) loads only
vLLM's own group, and it needs the model class too: vLLM's multimodal registry resolves the served
architecture there to size the encoder budget and cache. Without it the scheduler runs "text-only" (encoder
cache of 0 tokens) and never schedules a source picture: an image-to-image request prefilled up to the
picture, then waited forever. Registering twice in one process is harmless (each step checks first).
`python -m glmimage_serve.install` installs the entry point (a bare dist-info + a .pth to the pack).
"""


def register() -> None:
    from vllm import ModelRegistry
    from vllm_omni.config.pipeline_registry import OMNI_PIPELINES, register_pipeline
    from vllm_omni.model_executor.models import OmniModelRegistry

    from .pipeline import GLM_IMAGE_AR_ONLY, GLM_IMAGE_AR_ONLY_HUB, SERVE_ARCH

    for pipeline in (GLM_IMAGE_AR_ONLY, GLM_IMAGE_AR_ONLY_HUB):
        if pipeline.model_type not in OMNI_PIPELINES:
            register_pipeline(pipeline)
    # vLLM-Omni resolves stage models through its own registry (OmniModelRegistry); vLLM's for the rest
    for registry in (OmniModelRegistry, ModelRegistry):
        if SERVE_ARCH not in registry.get_supported_archs():
            registry.register_model(SERVE_ARCH, "glmimage_serve.model:GlmImageARForServing")
