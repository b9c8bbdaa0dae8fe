from ..glmimage_core.ar import loading as ar_loading
from ..glmimage_core.memory import vram_plan
from ..glmimage_core.weights.cast_layers import WEIGHT_DTYPE_CHOICES
from ..glmimage_core.dtypes import DTYPE_CHOICES
from .api import ADVANCED, io
from .inputs import NO_MODELS, model_choices, require_model  # noqa: F401 (NO_MODELS: the placeholder, named here too)
from .messages import show_message
from .sockets import CATEGORY, GlmImageAR

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
                io.Combo.Input("model", options=model_choices("ar"),
                               tooltip="A folder under models/glm_image/: the hub's zai-org/GLM-Image download "
                                       "(model_index.json, vision_language_encoder/, processor/) or a plain "
                                       "transformers folder (config.json + tokenizer files). Or one AR model file "
                                       "(bf16 or fp8, tokenizer and chat template inside) from text_encoders/ or "
                                       "models/glm_image/."),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default="auto",
                               tooltip="Weight precision. auto = the checkpoint's own (bf16 for the hub weights; "
                                       "fp16 on GPUs without bf16). fp32 doubles the memory.", **ADVANCED),
                io.Combo.Input("device", options=ar_loading.DEVICE_CHOICES, default="auto",
                               tooltip="auto/gpu = ComfyUI's compute device; cpu keeps the model in RAM (slow).",
                               **ADVANCED),
                io.Combo.Input("attention", options=ar_loading.ATTENTION_CHOICES, default="sdpa",
                               tooltip="sdpa = PyTorch's fused attention (fast); eager = the plain reference path.",
                               **ADVANCED),
                io.Combo.Input("quantization", options=ar_loading.QUANTIZATION_CHOICES, default="none",
                               tooltip="Low-VRAM loading on CUDA GPUs with the optional bitsandbytes package: "
                                       "int8 (~10.4 GB) or nf4 (~6.6 GB) instead of bf16's 17.6 GB; slower per "
                                       "token.", **ADVANCED),
                io.Combo.Input("weight_dtype", options=WEIGHT_DTYPE_CHOICES, default="default",
                               tooltip="How the weights are stored: default = the dtype above (bf16: ~17.6 GB on "
                                       "the GPU); fp8_e4m3fn / fp8_e5m2 = 8-bit storage (~8.9 GB), computed in "
                                       "the dtype above (ComfyUI's own weight_dtype option). Any GPU, no extra "
                                       "package; use it or quantization, not both.",
                               optional=True),  # added after 0.1.0: absent = default, as 0.1.0 loaded
            ],
            outputs=[GlmImageAR.Output("ar_model", display_name="AR model", tooltip="The AR model and its processor."),
                     io.String.Output("memory", display_name="memory",
                                      tooltip="What the AR model holds on the GPU with these options, and with the "
                                              "others (connect 'Preview Any' to read it).")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str, device: str, attention: str, quantization: str = "none",
                weight_dtype: str = "default") -> io.NodeOutput:
        ar = ar_loading.load_ar_model(require_model(model), dtype=dtype, device=device, attention=attention,
                                      quantization=quantization, weight_dtype=weight_dtype)
        memory = vram_plan.describe_weights("GLM-Image AR model", ar.inventory,
                                            vram_plan.WeightOption(ar.weight_dtype.label, ar.quantization), vram_plan.AR_OPTIONS,
                                            ar.dtype, host_on_device=not ar.embeddings_on_host)
        show_message(memory)
        return io.NodeOutput(ar, memory)



