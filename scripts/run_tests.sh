#!/usr/bin/env bash
# THE test command: sets everything up (scripts/setup_env.sh), then runs the whole suite,
# including the integration tests against a real ComfyUI server. Extra args go to pytest.
# GLMIMAGE_SKIP_COMFY=1 skips the tests that start a ComfyUI server (tests/integration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
status=0
.venv/bin/python -m pytest -q -rs tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "[run_tests] ERROR: pytest collected no tests (exit 5)" >&2
fi
exit "$status"
