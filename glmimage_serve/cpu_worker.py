"""A CPU worker for vLLM-Omni's AR stage (vLLM-Omni 0.30 has no CPU platform).

vLLM-Omni's GPU AR worker = omni's worker mixin + vLLM's GPU worker, running omni's AR model runner
(M-RoPE decode positions for the target grid, multimodal outputs) on vLLM's GPU model runner. On the
CPU the same stacking works on vLLM's CPU classes: omni's AR model runner over vLLM's CPU model runner,
omni's worker mixin over vLLM's CPU worker. deploy.py names this class (`worker_cls`) only when the
server runs on the CPU; on GPUs omni's own worker applies. Tests and the CPU benchmark run on it.
"""

from __future__ import annotations

import vllm.v1.worker.cpu_worker as vllm_cpu_worker
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm_omni.worker.gpu_ar_model_runner import GPUARModelRunner
from vllm_omni.worker.mixins import OmniWorkerMixin


class CPUARModelRunner(GPUARModelRunner, CPUModelRunner):
    """Omni's AR runner whose vLLM base is the CPU runner (MRO: omni AR -> ... -> CPU -> GPU runner)."""

    def __init__(self, vllm_config, device) -> None:
        super().__init__(vllm_config, device)
        # buffers omni's runner made after the CPU runner's own clean-up: host copy = device copy
        self._postprocess_tensors()


class CPUARWorker(OmniWorkerMixin, CPUWorker):
    def init_device(self) -> None:
        # vLLM's CPU worker builds `CPUModelRunner(...)` by that module-level name; let it build ours.
        vllm_cpu_worker.CPUModelRunner = CPUARModelRunner
        try:
            super().init_device()
        finally:
            vllm_cpu_worker.CPUModelRunner = CPUModelRunner
