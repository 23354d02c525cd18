#!/usr/bin/env bash
# The project's virtualenv: .venv made with the machine's python3 (>= 3.11), the package
# installed editable with its test extras (which also generates the gRPC stubs into
# services/v1). Skips when the stamp in .venv matches pyproject.toml, setup.py and protos/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.vws-setup-stamp"
LOG="${TMPDIR:-/tmp}/vws-setup-python.log"

# What the install depends on: build config, every input of the stub generation and the
# Cython sources (a changed .pyx is rebuilt).
inputs_hash() {
  (cd "$ROOT" && { find pyproject.toml setup.py protos -type f \( -name '*.toml' -o -name '*.py' \
      -o -name '*.proto' -o -name '*.yaml' \) -not -path '*/__pycache__/*' -print
      find native -type f \( -name '*.pyx' -o -name '*.pxd' \) -print; } | LC_ALL=C sort |
    while read -r f; do printf '%s\n' "$f"; sha256sum <"$f"; done) | sha256sum | cut -d' ' -f1
}

py_ok() {  # usable interpreter, >= 3.11
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

stubs_present() {  # x_pb2.py, x_pb2.pyi, x_pb2_grpc.py for every protos/vws/v1/x.proto
  local proto name suffix
  for proto in "$ROOT"/protos/vws/v1/*.proto; do
    name="$(basename "$proto" .proto)"
    for suffix in _pb2.py _pb2.pyi _pb2_grpc.py; do
      [ -f "$ROOT/services/v1/$name$suffix" ] || return 1
    done
  done
}

extensions_built() {  # native/x.*.so beside every native/x.pyx (built in place by pip install -e)
  local pyx
  for pyx in "$ROOT"/native/*.pyx; do
    [ -e "$pyx" ] || continue
    compgen -G "${pyx%.pyx}.*.so" >/dev/null || return 1
  done
}

command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (run scripts/setup-system.sh)"
py_ok "$PYTHON" || die "$PYTHON is $("$PYTHON" -V 2>&1); need Python >= 3.11 with venv"

want="$(inputs_hash)"
if py_ok "$VENV/bin/python" && [ -x "$VENV/bin/vws" ] && [ -f "$ROOT/services/v1/__init__.py" ] &&
   [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && extensions_built; then
  # Generated stubs edited or deleted since the install: regenerate them, nothing else.
  if [ -n "$(find "$ROOT/services/v1" -maxdepth 1 -type f -newer "$STAMP" -print -quit)" ] || ! stubs_present; then
    start="$(now)"
    logged "$LOG" "$VENV/bin/python" "$ROOT/protos/generate.py"
    touch "$STAMP"
    step "python venv" "up to date; regenerated stubs in services/v1 ($(elapsed "$start"))"
    exit 0
  fi
  step "python venv" "up to date, $("$VENV/bin/python" -V 2>&1) (skip)"
  exit 0
fi

start="$(now)"
made=reused
if ! py_ok "$VENV/bin/python"; then
  # Missing, or its interpreter is gone (a removed pyenv version): make it afresh.
  rm -rf "$VENV"
  logged "$LOG" "$PYTHON" -m venv "$VENV"
  made=created
fi
rm -f "$STAMP"
logged "$LOG" "$VENV/bin/python" -m pip install -e "$ROOT[test]"
[ -x "$VENV/bin/vws" ] || die "pip install did not leave $VENV/bin/vws"
[ -f "$ROOT/services/v1/__init__.py" ] || die "stubs not generated into services/v1"
printf '%s\n' "$want" >"$STAMP"
step "python venv" "$made, installed -e .[test] with $("$VENV/bin/python" -V 2>&1) ($(elapsed "$start"))"
