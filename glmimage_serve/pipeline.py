"""The one-stage pipeline: GLM-Image's AR stage alone, its token ids the final output.

vLLM-Omni's own GLM-Image pipeline chains AR -> DiT; here the DiT stays a native ComfyUI model, so the
AR stage is the final stage (`engine_output_type="token_ids"`). A deploy YAML selects it with
`pipeline: glm_image_ar_only` (deploy.py writes one).
"""

from vllm_omni.config.stage_config import PipelineConfig, StageExecutionType, StagePipelineConfig

PIPELINE_KEY = "glm_image_ar_only"
#: Source pictures per prompt. vLLM-Omni declares 1; GLM-Image's processor and model take several (the
#: pack's local node does), and the tests check 2 against transformers token for token.
MAX_SOURCES = 4
#: The architecture name the stage loads (model.py registers it with vLLM): vLLM-Omni's GLM-Image AR
#: model that also returns the source images' token ids to the client.
SERVE_ARCH = "GlmImageARForServing"

#: The hub's layout (zai-org/GLM-Image: vision_language_encoder/ + processor/) under its own key: vLLM-Omni
#: reads the subfolders from the stage (as its own two-stage GLM-Image pipeline does).
HUB_PIPELINE_KEY = "glm_image_ar_only_hub"


def _pipeline(key: str, hub: bool) -> PipelineConfig:
    return PipelineConfig(
        model_type=key,
        model_arch=SERVE_ARCH,
        hf_architectures=(),  # reachable through the deploy YAML's `pipeline:` key only
        stages=(
            StagePipelineConfig(
                stage_id=0,
                model_stage="ar",
                execution_type=StageExecutionType.LLM_AR,
                requires_multimodal_data=True,
                input_sources=(),
                final_output=True,
                final_output_type="text",
                owns_tokenizer=True,
                model_arch=SERVE_ARCH,
                engine_output_type="token_ids",
                model_subdir="vision_language_encoder" if hub else None,
                tokenizer_subdir="processor" if hub else None,
            ),
        ),
    )


GLM_IMAGE_AR_ONLY = _pipeline(PIPELINE_KEY, hub=False)
GLM_IMAGE_AR_ONLY_HUB = _pipeline(HUB_PIPELINE_KEY, hub=True)
