#!/usr/bin/env bash
# THE test command: sets everything up (scripts/setup_env.sh), then runs the whole suite,
# including the integration tests against a real ComfyUI server. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -rs tests "$@"
