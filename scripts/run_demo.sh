#!/usr/bin/env bash
# THE main job on a fresh machine: sets up, then runs text-to-image and image-to-image with a tiny
# random GLM-Image built on the spot (no download) and writes tokens, previews and PNGs to output/demo.
# Give --model/--prompt via `python -m glmimage_core generate ...` for the real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
GLMIMAGE_SETUP_MAIN_ONLY=1 bash scripts/setup_env.sh  # the demo needs no second ComfyUI
exec .venv/bin/python -m glmimage_core.demo --out output/demo "$@"
