"""Entry point `vllm_omni.general_plugins: glmimage_serve = glmimage_serve.plugin:register`.

vLLM-Omni loads this group in every one of its processes (API front, orchestrator, engine cores,
workers); no flag names a pipeline module, so the registration must come through here.
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
