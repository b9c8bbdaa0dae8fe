from .api import io

from ..glmimage_core import ar_loading
from ..glmimage_core.dtypes import DTYPE_CHOICES
from ..glmimage_core.model_folders import list_model_folders
from .sockets import CATEGORY, GlmImageAR

NO_MODELS = "(no models in models/glm_image)"


def model_choices() -> list[str]:
    """The folders under models/glm_image/, or a placeholder that says where to put them."""
    return list_model_folders() or [NO_MODELS]


def require_model(model: str) -> str:
    if model == NO_MODELS:
        raise ValueError("model: no model folder found in models/glm_image/. Download zai-org/GLM-Image "
                         "into models/glm_image/GLM-Image and refresh the page.")
    return model


class GLMImageARLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageARLoader",
            display_name="Load GLM-Image AR model",
            category=CATEGORY,
            description="Loads GLM-Image's autoregressive model (GlmImageForConditionalGeneration, ~9B) and its "
                        "processor from a folder under models/glm_image/. Loaded once and reused by later runs.",
            inputs=[
                io.Combo.Input("model", options=model_choices(),
                               tooltip="A folder under models/glm_image/: the hub's zai-org/GLM-Image download "
                                       "(model_index.json, vision_language_encoder/, processor/) or a plain "
                                       "transformers folder (config.json + tokenizer files)."),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                               tooltip="Weight precision. auto = the checkpoint's own (bf16 for the hub weights; "
                                       "fp16 on GPUs without bf16). fp32 doubles the memory."),
                io.Combo.Input("device", options=ar_loading.DEVICE_CHOICES, default="auto",
                               tooltip="auto/gpu = ComfyUI's compute device; cpu keeps the model in RAM (slow)."),
                io.Combo.Input("attention", options=ar_loading.ATTENTION_CHOICES, default="sdpa",
                               tooltip="sdpa = PyTorch's fused attention (fast); eager = the plain reference path."),
                io.Combo.Input("quantization", options=ar_loading.QUANTIZATION_CHOICES, default="none",
                               tooltip="Low-VRAM loading on CUDA GPUs with the optional bitsandbytes package: "
                                       "int8 (~half of bf16's VRAM) or nf4 (~a quarter); slower per token."),
            ],
            outputs=[GlmImageAR.Output("ar_model",
                                                     tooltip="The AR model and its processor.")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str, device: str, attention: str,
                quantization: str = "none") -> io.NodeOutput:
        return io.NodeOutput(ar_loading.load_ar_model(require_model(model), dtype=dtype, device=device,
                                                      attention=attention, quantization=quantization))



