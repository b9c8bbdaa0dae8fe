from .api import ADVANCED, io

from ..glmimage_core.ar.remote import MAX_IMAGES, RemoteSampling, generate_tokens_remote
from ..glmimage_core.ar.remote_http import API_KEY_ENV
from .messages import show_message
from .sockets import CATEGORY, GlmImageInputs, GlmImageTokens

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"


class GLMImageGenerateTokensServer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GLMImageGenerateTokensServer",
            display_name="GLM-Image generate tokens (server)",
            category=CATEGORY,
            description="Samples the image tokens on a GLM-Image AR server (python -m glmimage_serve: vLLM-Omni, "
                        "batching requests from many users and GPUs) instead of in ComfyUI. Same tokens "
                        "payload as 'GLM-Image generate tokens', the grid previewed as tokens arrive; cancel "
                        "aborts the request on the server. API key, if the server wants one: environment "
                        f"variable {API_KEY_ENV}.",
            inputs=[
                GlmImageInputs.Input("inputs", tooltip="From 'GLM-Image prompt' (its AR model must be the one the "
                                                       "server serves: the server checks the prompt's ids)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFF_FFFF_FFFF_FFFF, control_after_generate=True,
                             tooltip="Sampling seed. With several images, picture i uses seed + i (one request "
                                     "each). The server's sampler is vLLM's: a seed gives the same tokens every "
                                     "time, but not the same as the local node's."),
                io.Int.Input("images", default=1, min=1, max=MAX_IMAGES,
                             tooltip="Pictures to sample for this prompt: that many requests sent at once, which "
                                     "the server batches with everyone else's."),
                io.Boolean.Input("do_sample", default=True,
                                 tooltip="Sample (recommended by the authors). Off = greedy (the same ids as the "
                                         "local node's greedy run).", **ADVANCED),
                io.Float.Input("temperature", default=0.0, min=0.0, max=2.0, step=0.05,
                               tooltip="0 = the model's own setting (0.9 for GLM-Image). Higher = more varied."),
                io.Float.Input("top_p", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = the model's own setting (0.75 for GLM-Image).", **ADVANCED),
                io.Int.Input("top_k", default=0, min=0, max=16384,
                             tooltip="0 = the model's own setting (else 50, transformers' default).", **ADVANCED),
                io.String.Input("server_url", default=DEFAULT_SERVER_URL,
                                tooltip="Address of the AR server, e.g. http://127.0.0.1:8000 (python -m "
                                        "glmimage_serve --model <folder> --port 8000; see the README, 'AR on a "
                                        f"server'). No secrets here: the API key comes from {API_KEY_ENV}."),
            ],
            outputs=[GlmImageTokens.Output("tokens", display_name="tokens",
                                           tooltip="The sampled ids, for 'GLM-Image extract tokens'."),
                     io.String.Output("notes", display_name="notes",
                                      tooltip="Which server and model sampled them; connect 'Preview as Text' to "
                                              "keep it.")],
        )

    @classmethod
    def execute(cls, inputs, seed: int, images: int, do_sample: bool, temperature: float, top_p: float,
                top_k: int, server_url: str) -> io.NodeOutput:
        sampling = RemoteSampling(do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k)
        tokens = generate_tokens_remote(server_url, inputs, seed=seed, sampling=sampling, images=images)
        notes = "\n".join(tokens.notes)
        if notes:
            show_message(notes)
        return io.NodeOutput(tokens, notes)
