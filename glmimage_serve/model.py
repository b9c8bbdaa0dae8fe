"""vLLM-Omni's GLM-Image AR model, told to hand the source images' token ids back to the client.

For image-to-image the AR model quantises each source picture into codebook ids (`ids.prior_image`,
nearest-upsampled to d16); the DiT needs them to decode. An AR stage that is the last stage drops them
unless the model names them in `omni_client_multimodal_output_keys`; this subclass does only that.
"""

from vllm_omni.model_executor.models.glm_image.glm_image_ar import GlmImageForConditionalGeneration


class GlmImageARForServing(GlmImageForConditionalGeneration):
    omni_client_multimodal_output_keys = ("ids.prior_image",)
