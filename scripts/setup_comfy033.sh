#!/usr/bin/env bash
# Sets up a 2026 ComfyUI to test the pack against, next to the 0.3.75 of scripts/setup_env.sh:
#   .cache/comfyui-0.33.0/  ComfyUI 0.33.0, unpacked from the source snapshot
#                           ../shared/vendor/comfyui-0.33.0.tar.gz (or $GLMIMAGE_COMFY033_TARBALL)
#   .venv-comfy033/         its Python: torch 2.11.0 + torchvision 0.26.0 + torchaudio 2.11.0 (0.33's
#                           comfy/sd.py imports torchaudio, which the package index has only for torch
#                           <= 2.11; torchaudio 2.11.1 does not load with torch 2.11.0), 0.33's requirements,
#                           the pack's requirements (transformers 5.23.0, diffusers 0.42.1), pytest and peft
# Independent of setup_env.sh's .venv (so it can run at the same time). Idempotent: each part writes a
# stamp when complete. Without the snapshot it says so loudly and exits 0: the tests on 0.33.0 then skip
# and name the reason. GLMIMAGE_SKIP_COMFY033=1 skips it on request; GLMIMAGE_SETUP_FORCE=1 redoes it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
CACHE=$REPO/.cache
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

SETUP_TAG=setup-0.33
source scripts/setup_lib.sh  # say, die, hash_of, stamp_ok, pip_in
mkdir -p "$CACHE"

t0=$SECONDS
VENV033=$REPO/.venv-comfy033
COMFY033=$CACHE/comfyui-0.33.0
TARBALL033=${GLMIMAGE_COMFY033_TARBALL:-$REPO/../shared/vendor/comfyui-0.33.0.tar.gz}
STAMP033_VERSION=1
if [ "${GLMIMAGE_SKIP_COMFY033:-0}" = 1 ]; then
  say "SKIPPING ComfyUI 0.33.0 (GLMIMAGE_SKIP_COMFY033=1): the tests against it will be skipped"
  exit 0
fi
if [ -f "$TARBALL033" ]; then
  COMFY033_WANT="$STAMP033_VERSION $(hash_of "$TARBALL033")"
elif [ -f "$COMFY033/.glmimage-stamp" ] && [ "${GLMIMAGE_SETUP_FORCE:-0}" != 1 ]; then
  say "no source snapshot at $TARBALL033: keeping the ComfyUI 0.33.0 unpacked earlier"
  COMFY033_WANT=$(cat "$COMFY033/.glmimage-stamp")
else
  say "!!! SKIPPING ComfyUI 0.33.0: no source snapshot at $TARBALL033"
  say "!!! (put comfyui-0.33.0.tar.gz there or set GLMIMAGE_COMFY033_TARBALL); its tests will be skipped"
  exit 0
fi
if ! stamp_ok "$COMFY033/.glmimage-stamp" "$COMFY033_WANT"; then
  say "unpacking ComfyUI 0.33.0 from $TARBALL033 into $COMFY033"
  rm -rf "$COMFY033" "$COMFY033.partial"
  mkdir -p "$COMFY033.partial"
  tar -xzf "$TARBALL033" -C "$COMFY033.partial" --strip-components=1 || die "cannot unpack $TARBALL033"
  [ -f "$COMFY033.partial/main.py" ] && [ -f "$COMFY033.partial/requirements.txt" ] \
    || die "$TARBALL033 holds no ComfyUI tree (no <top folder>/main.py and requirements.txt)"
  grep -q '"0.33.0"' "$COMFY033.partial/comfyui_version.py" \
    || die "$TARBALL033 is not ComfyUI 0.33.0: $(cat "$COMFY033.partial/comfyui_version.py" | tail -1)"
  mv "$COMFY033.partial" "$COMFY033"
  echo "$COMFY033_WANT" > "$COMFY033/.glmimage-stamp"
else
  say "ComfyUI 0.33.0 is in place ($COMFY033)"
fi

if ! "$VENV033/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating the venv $VENV033 with $("$PY" --version 2>&1)"
  rm -rf "$VENV033"
  "$PY" -m venv "$VENV033" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi
CONSTRAINTS033=$CACHE/constraints-comfy033.txt
printf 'torch==2.11.0\ntorchvision==0.26.0\ntorchaudio==2.11.0\ntransformers==5.23.0\ndiffusers==0.42.1\n' \
  > "$CONSTRAINTS033"
grep -vE '^\s*(torch|torchvision|torchaudio)\s*([=<>!~;#].*)?$' "$COMFY033/requirements.txt" \
  > "$CACHE/comfy033-requirements.txt"
VENV033_WANT="$STAMP033_VERSION $(hash_of requirements.txt "$CACHE/comfy033-requirements.txt" "$CONSTRAINTS033")"
if ! stamp_ok "$VENV033/.glmimage-stamp" "$VENV033_WANT"; then
  rm -f "$VENV033/.glmimage-stamp"
  say "installing torch 2.11.0 + torchvision 0.26.0 + torchaudio 2.11.0 into $VENV033 (from the package index,"
  say "a few GB: takes minutes the first time)"
  pip_in "$VENV033/bin/python" install --upgrade pip
  pip_in "$VENV033/bin/python" install -c "$CONSTRAINTS033" torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0
  say "installing ComfyUI 0.33.0's requirements, the pack's requirements.txt and pytest"
  pip_in "$VENV033/bin/python" install -c "$CONSTRAINTS033" -r requirements.txt pytest \
    -r "$CACHE/comfy033-requirements.txt"
  say "checking that torch, torchvision, torchaudio, transformers and diffusers import together"
  "$VENV033/bin/python" -c 'import torch, torchvision, torchaudio, transformers, diffusers; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)' \
    || die "the venv $VENV033 does not import its packages (see above)"
  echo "$VENV033_WANT" > "$VENV033/.glmimage-stamp"
else
  say "venv for ComfyUI 0.33.0 is up to date ($VENV033)"
fi
# Test-only: peft (the AR LoRA tests), checked on every run so that an older venv gets it without a rebuild.
"$VENV033/bin/python" -c 'import peft' 2>/dev/null || {
  say "installing peft (tests only)"; pip_in "$VENV033/bin/python" install -c "$CONSTRAINTS033" peft; }
"$VENV033/bin/python" - <<'PYEOF' || die "$VENV033 lacks packages: rerun with GLMIMAGE_SETUP_FORCE=1"
from importlib.metadata import version
print("[setup-0.33] " + ", ".join(f"{name} {version(name)}" for name in
                                  ("torch", "torchvision", "torchaudio", "transformers", "diffusers",
                                   "comfyui-frontend-package")))
PYEOF
say "done in $((SECONDS - t0)) s"
