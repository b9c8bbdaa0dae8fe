"""vLLM-Omni's GLM-Image AR model, told to hand the source images' token ids back to the client.

For image-to-image the AR model quantises each source picture into codebook ids (`ids.prior_image`,
nearest-upsampled to d16); the DiT needs them to decode. An AR stage that is the last stage drops them
unless the model names them in `omni_client_multimodal_output_keys`; this subclass does that, and takes up
to MAX_SOURCES source pictures per prompt.
"""

from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm_omni.model_executor.models.glm_image.glm_image_ar import (GlmImageDummyInputsBuilder,
                                                                     GlmImageForConditionalGeneration,
                                                                     GlmImageMultiModalProcessor,
                                                                     GlmImageProcessingInfo)

from .pipeline import MAX_SOURCES


class GlmImageServingInfo(GlmImageProcessingInfo):
    def get_supported_mm_limits(self):
        return {"image": MAX_SOURCES, "img2img": MAX_SOURCES}


@MULTIMODAL_REGISTRY.register_processor(GlmImageMultiModalProcessor, info=GlmImageServingInfo,
                                        dummy_inputs=GlmImageDummyInputsBuilder)
class GlmImageARForServing(GlmImageForConditionalGeneration):
    omni_client_multimodal_output_keys = ("ids.prior_image",)
