"""Marks of the CUDA-only tests (tests/test_cuda.py, tests/integration/test_gpu_server.py): skipped without a
CUDA GPU, saying so; GLMIMAGE_CUDA_TESTS_ON_CPU=1 runs them on the CPU (the GPU check's dry run)."""

import os

import pytest
import torch

ON_CPU = os.environ.get("GLMIMAGE_CUDA_TESTS_ON_CPU") == "1"
CUDA = torch.cuda.is_available()
CUDA_ONLY = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA and not ON_CPU, reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on the "
                                                       "device machine; GLMIMAGE_CUDA_TESTS_ON_CPU=1 to dry-run)"),
]
DEVICE = "cpu" if ON_CPU or not CUDA else "cuda"
