# Helpers shared by scripts/setup_env.sh and scripts/setup_comfy033.sh (sourced, not run).
# SETUP_TAG names the script in its messages.

say() { printf '[%s] %s\n' "$SETUP_TAG" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$SETUP_TAG" "$*" >&2; exit 1; }
hash_of() { cat "$@" | sha1sum | cut -c1-12; }
# Whether stamp file $1 says $2 (what is wanted), i.e. that part is already set up (GLMIMAGE_SETUP_FORCE=1: never).
stamp_ok() { [ "${GLMIMAGE_SETUP_FORCE:-0}" != 1 ] && [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
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
