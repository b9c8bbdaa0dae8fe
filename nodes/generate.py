from .api import ADVANCED, io

from ..glmimage_core.ar.generation import MAX_IMAGES, SPEEDS, SamplingSettings, generate_tokens
from .messages import show_message
from .sockets import CATEGORY, GlmImageAR, GlmImageInputs, GlmImageTokens


class GLMImageGenerateTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageGenerateTokens",
            display_name="GLM-Image generate tokens",
            category=CATEGORY,
            description="Samples the image tokens with the AR model, one token at a time, showing the grid as it "
                        "fills in (the first picture; coloured by the model's codebook). Cancel stops between "
                        "tokens. Same seed and inputs give the same tokens.",
            inputs=[
                GlmImageAR.Input("ar_model", tooltip="From 'Load GLM-Image AR model'."),
                GlmImageInputs.Input("inputs", tooltip="From 'GLM-Image prompt'."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFF_FFFF_FFFF_FFFF, control_after_generate=True,
                             tooltip="Sampling seed. With several images, picture i uses seed + i (so any one "
                                     "of them can be redone alone)."),
                io.Int.Input("images", default=1, min=1, max=MAX_IMAGES,
                             tooltip="Pictures to sample for this prompt, in one batched run (faster per "
                                     "picture on a GPU, more memory)."),
                io.Boolean.Input("do_sample", default=True,
                                 tooltip="Sample (recommended by the authors). Off = greedy, which tends to "
                                         "repeat itself.", **ADVANCED),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05,
                               tooltip="0 = the model's own setting (0.9 for GLM-Image). Higher = more varied."),
                io.Float.Input("top_p", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = the model's own setting (0.75 for GLM-Image).", **ADVANCED),
                io.Int.Input("top_k", default=0, min=0, max=16384,
                             tooltip="0 = the model's own setting.", **ADVANCED),
                io.Combo.Input("speed", options=SPEEDS, default="standard",
                               tooltip="standard = plain transformers generate. compiled = static KV cache + "
                                       "torch.compile with CUDA graphs (CUDA GPUs; the first run of a shape "
                                       "compiles, later runs reuse it; elsewhere it falls back to standard).",
                               **ADVANCED),
                io.Boolean.Input("offload_after", default=True,
                                 tooltip="Move the AR model off the GPU when done, so the decoder has the VRAM."),
                io.Boolean.Input("allow_streaming", default=False,
                                 tooltip="When the AR model does not fit in free VRAM: off = stop and say which "
                                         "loader option fits (weight_dtype fp8, quantization nf4); on = stream its "
                                         "layers from RAM on every token (works, but 10-50x slower).",
                                 optional=True, **ADVANCED),  # added after 0.1.0: absent = off, as 0.1.0
            ],
            outputs=[GlmImageTokens.Output("tokens", display_name="tokens",
                                           tooltip="The sampled ids, for 'GLM-Image extract tokens'."),
                     io.String.Output("notes", display_name="notes",
                                      tooltip="What this run wants you to know (e.g. that speed=compiled ran as "
                                              "standard, and why); empty when nothing. Also shown on the node; "
                                              "connect 'Preview as Text' to keep it.")],
        )

    @classmethod
    def execute(cls, ar_model, inputs, seed: int, images: int, do_sample: bool, temperature: float, top_p: float,
                top_k: int, speed: str, offload_after: bool, allow_streaming: bool = False) -> io.NodeOutput:
        sampling = SamplingSettings(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k)
        tokens = generate_tokens(ar_model, inputs, seed=seed, sampling=sampling, offload_after=offload_after,
                                 images=images, speed=speed, allow_streaming=allow_streaming)
        notes = "\n".join(tokens.notes)
        if notes:
            show_message(notes)
        return io.NodeOutput(tokens, notes)
