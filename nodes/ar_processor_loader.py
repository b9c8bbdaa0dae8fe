from .api import io

from ..glmimage_core.ar.loading import load_ar_processor
from .inputs import model_choices, require_model
from .sockets import CATEGORY, GlmImageAR


class GLMImageARProcessorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageARProcessorLoader",
            display_name="Load GLM-Image processor (server)",
            category=CATEGORY,
            description="The AR model's processor and config without its weights (nothing loaded to RAM or VRAM), "
                        "for 'GLM-Image prompt' when an AR server samples the tokens ('GLM-Image generate "
                        "tokens (server)'). The local 'generate tokens' node refuses it.",
            inputs=[
                io.Combo.Input("model", options=model_choices(),
                               tooltip="A folder under models/glm_image/ (the hub's zai-org/GLM-Image layout or a "
                                       "plain transformers folder): the same model the AR server serves. Only its "
                                       "config and processor files are read."),
            ],
            outputs=[GlmImageAR.Output("ar_model", display_name="AR processor",
                                       tooltip="Processor + config, for 'GLM-Image prompt' (weights stay on the "
                                               "server).")],
        )

    @classmethod
    def execute(cls, model: str) -> io.NodeOutput:
        return io.NodeOutput(load_ar_processor(require_model(model)))
