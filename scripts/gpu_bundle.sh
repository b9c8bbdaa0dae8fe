#!/usr/bin/env bash
# Builds .gpu-bundle/, what the GPU check carries to the device machine (which has no network):
#   site.tar.xz            the any + abi3 wheels of scripts/gpu/bundle_wheels.txt, installed (pip --target,
#                          no .pyc) into site/ and packed with xz (half the size of the wheels themselves)
#   wheels/*.whl           the cp wheels, for CPython 3.12 (the device's)
#   comfyui-0.33.0.tar.gz  ComfyUI 0.33.0's source snapshot (../shared does not travel)
#   MANIFEST.txt           name==version kind sha256 of every wheel, the snapshot's sha256 (gpu_check.py checks it)
# Then it adds up the working tree (tracked + untracked-not-ignored files, what travels) and the bundle: the
# device call carries 64 MiB at most; this fails above 56 MiB. Wheels are downloaded once (~60 MB, PyPI) into
# .cache/gpu-wheels/; the build is skipped when MANIFEST.txt already matches the pinned list.
# Run it here, then on the device:  bash scripts/gpu_check.sh   (with carry [".gpu-bundle"]).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-$REPO/.venv/bin/python}
SETUP_TAG=gpu-bundle
source scripts/setup_lib.sh  # say, die, hash_of
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
LIST=scripts/gpu/bundle_wheels.txt
BUNDLE=$REPO/.gpu-bundle
WHEELS=$REPO/.cache/gpu-wheels
TARBALL=${GLMIMAGE_COMFY033_TARBALL:-$REPO/../shared/vendor/comfyui-0.33.0.tar.gz}
LIMIT_MIB=${GLMIMAGE_BUNDLE_LIMIT_MIB:-56}
[ -f "$TARBALL" ] || die "no ComfyUI 0.33.0 snapshot at $TARBALL (set GLMIMAGE_COMFY033_TARBALL)"
t0=$SECONDS

# fetch NAME==VER KIND PYVER DEST: one wheel, no dependencies (they are pinned in the list themselves)
fetch() {
  local spec=$1 kind=$2 pyver=$3 dest=$4 plat
  if [ "$kind" = any ]; then
    plat=(--platform any)
  else
    plat=(--python-version "$pyver" --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  fi
  pip_in "$PY" download --no-deps --only-binary=:all: "${plat[@]}" -d "$dest" "$spec"
}
export -f fetch 2>/dev/null || true

WANT="1 $(hash_of "$LIST" "$TARBALL")"
if [ -f "$BUNDLE/.stamp" ] && [ "$(cat "$BUNDLE/.stamp")" = "$WANT" ] && [ "${GLMIMAGE_SETUP_FORCE:-0}" != 1 ]; then
  say "bundle up to date ($BUNDLE)"
else
  rm -rf "$BUNDLE" "$BUNDLE.partial"
  mkdir -p "$BUNDLE.partial/wheels" "$WHEELS/cp312"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  : > "$BUNDLE.partial/MANIFEST.txt"
  while read -r spec kind _; do
    case "$spec" in ''|'#'*) continue ;; esac
    name=${spec%%==*}; ver=${spec#*==}
    stem=$(echo "$name" | tr 'A-Z-' 'a-z_')
    whl=$(ls "$WHEELS/cp312/" 2>/dev/null | grep -i "^${stem}-${ver}-" | head -1 || true)
    if [ -z "$whl" ]; then
      say "downloading $spec ($kind)"
      fetch "$spec" "$kind" 3.12 "$WHEELS/cp312"
      whl=$(ls "$WHEELS/cp312/" | grep -i "^${stem}-${ver}-" | head -1) || die "no wheel of $spec downloaded"
    fi
    case "$kind:$whl" in
      any:*-py3-none-any.whl|any:*-py2.py3-none-any.whl) cp "$WHEELS/cp312/$whl" "$work/" ;;
      abi3:*-abi3-*.whl) cp "$WHEELS/cp312/$whl" "$work/" ;;
      cp:*-cp312-*.whl) cp "$WHEELS/cp312/$whl" "$BUNDLE.partial/wheels/" ;;
      *) die "$whl does not match its kind '$kind' in $LIST (any: py3-none-any, abi3: cp3x-abi3, cp: cp312)" ;;
    esac
    echo "$spec $kind $whl $(sha256sum "$WHEELS/cp312/$whl" | cut -d' ' -f1)" >> "$BUNDLE.partial/MANIFEST.txt"
  done < "$LIST"
  say "installing the any + abi3 wheels into site/ and packing it (xz, a few minutes on 2 cores)"
  pip_in "$PY" install --no-deps --no-index --no-compile --target "$work/site" "$work"/*.whl
  tar -C "$work" -cf - site | xz -6 -T2 > "$BUNDLE.partial/site.tar.xz"
  cp "$TARBALL" "$BUNDLE.partial/comfyui-0.33.0.tar.gz"
  echo "comfyui-0.33.0.tar.gz $(sha256sum "$TARBALL" | cut -d' ' -f1)" >> "$BUNDLE.partial/MANIFEST.txt"
  echo "site.tar.xz $(sha256sum "$BUNDLE.partial/site.tar.xz" | cut -d' ' -f1)" >> "$BUNDLE.partial/MANIFEST.txt"
  mv "$BUNDLE.partial" "$BUNDLE"
  echo "$WANT" > "$BUNDLE/.stamp"
fi

tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 stat -L -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
bundle_bytes=$(find "$BUNDLE" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
total=$((tree_bytes + bundle_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
say "travels: working tree $(mib "$tree_bytes") MiB + bundle $(mib "$bundle_bytes") MiB = $(mib "$total") MiB" \
    "(the device call carries 64 MiB at most; limit here ${LIMIT_MIB} MiB)"
[ "$total" -le $((LIMIT_MIB * 1048576)) ] \
  || die "TOO BIG: $(mib "$total") MiB > ${LIMIT_MIB} MiB: drop a wheel from $LIST or untracked files from the tree"
say "done in $((SECONDS - t0)) s; on the device: bash scripts/gpu_check.sh  (carry [\".gpu-bundle\"])"
