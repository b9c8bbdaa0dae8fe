"""The deploy config vLLM-Omni reads, written from the command line's choices.

`pipeline: glm_image_ar_only` picks the one-stage pipeline (pipeline.py). The stage settings follow
vLLM-Omni's own deploy/glm_image.yaml for its AR stage (prefix caching off, detokenize off, the
model's sampling defaults, EOS = image end), with what the command line chose: devices, tensor /
data parallel, dtype, max model length, batch size. On the CPU the stage runs on cpu_worker.py's
worker and takes a small share of RAM for the KV cache.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .pipeline import HUB_PIPELINE_KEY, MAX_SOURCES, PIPELINE_KEY


@dataclass(frozen=True)
class ServeSettings:
    model: str
    device: str = "auto"  # auto | cuda | cpu
    devices: str | None = None  # GPU ids for the AR stage, e.g. "0" or "0,1"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 16
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    seed: int = 0

    def on_cpu(self) -> bool:
        if self.device != "auto":
            return self.device == "cpu"
        import torch

        return not torch.cuda.is_available()


def model_config(model: str) -> dict:
    """The served folder's config.json (the plain transformers layout or the hub's subfolder)."""
    root = Path(model)
    for candidate in (root / "config.json", root / "vision_language_encoder" / "config.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise SystemExit(f"--model {model!r}: no config.json there nor in vision_language_encoder/")


def stage_settings(settings: ServeSettings) -> dict:
    config = model_config(settings.model)
    end_id = int(config.get("image_end_token_id", 16385))
    stage: dict = {
        "stage_id": 0,
        "max_num_seqs": settings.max_num_seqs,
        "trust_remote_code": False,
        "enable_prefix_caching": False,
        "enforce_eager": settings.enforce_eager or settings.on_cpu(),
        "tensor_parallel_size": settings.tensor_parallel_size,
        "limit_mm_per_prompt": {"image": MAX_SOURCES},
        "default_sampling_params": {"temperature": 0.9, "top_p": 0.75, "stop_token_ids": [end_id],
                                    "detokenize": False},
    }
    if settings.max_model_len:
        stage["max_model_len"] = settings.max_model_len
    if settings.on_cpu():
        stage["worker_cls"] = "glmimage_serve.cpu_worker.CPUARWorker"
        stage["gpu_memory_utilization"] = settings.gpu_memory_utilization or 0.1
    else:
        stage["devices"] = settings.devices or ",".join(str(i) for i in range(settings.tensor_parallel_size))
        if settings.gpu_memory_utilization:
            stage["gpu_memory_utilization"] = settings.gpu_memory_utilization
    return stage


def write_deploy_yaml(settings: ServeSettings, folder: str | None = None) -> str:
    """A YAML file (JSON is YAML) for `AsyncOmni(deploy_config=...)`; returns its path."""
    hub = (Path(settings.model) / "vision_language_encoder").is_dir()
    deploy = {"pipeline": HUB_PIPELINE_KEY if hub else PIPELINE_KEY, "async_chunk": False, "stages": [stage_settings(settings)]}
    if settings.dtype != "auto":
        deploy["dtype"] = settings.dtype
    if settings.data_parallel_size > 1:
        deploy["data_parallel_size"] = settings.data_parallel_size
    handle, path = tempfile.mkstemp(prefix="glmimage_ar_", suffix=".yaml", dir=folder)
    with os.fdopen(handle, "w") as out:
        json.dump(deploy, out, indent=2)
    return path
