#!/usr/bin/env bash
# THE command for a device machine with a GPU (no network there): installs from .gpu-bundle/ (built here by
# scripts/gpu_bundle.sh and carried), then runs the CUDA tests, the example workflows in a real ComfyUI 0.33.0
# server on the GPU (three VRAM modes) and the GPU benchmarks, each part under its own time budget; writes
# summary.md, results.json, logs.txt, bench_gpu.md, bench_memory.md to $OUT (default ./gpu-out) and exits
# non-zero when any part did not pass. See scripts/gpu_check.py for the parts.
#   on the device:  run(command="bash scripts/gpu_check.sh", carry=[".gpu-bundle"], timeout_s=600)
#   here:           bash scripts/gpu_check.sh --dry-run     (the CPU, tiny models; figures marked dry run)
# Extra args go to gpu_check.py (--parts, --budget, --ar-layers, --steps, --ar-grid, --python).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${GLMIMAGE_GPU_CHECK_PYTHON:-}" ]; then
  PY=$GLMIMAGE_GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ] && ! command -v nvidia-smi >/dev/null 2>&1; then
  PY=.venv/bin/python   # here: the dry run's driver (the parts run in the rebuilt device image)
else
  PY=python3            # the device image's Python (torch 2.11 + CUDA)
fi
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
exec "$PY" scripts/gpu_check.py "$@"
