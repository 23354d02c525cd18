#!/usr/bin/env bash
# The project's virtualenv: .venv made with the machine's python3 (>= 3.11), the package
# installed editable with its test extras (which also generates the gRPC stubs into
# services/v1). Skips when the stamp in .venv matches pyproject.toml, setup.py and protos/.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.vws-setup-stamp"
LOG="${TMPDIR:-/tmp}/vws-setup-python.log"

# What the install depends on: build config and every input of the stub generation.
inputs_hash() {
  (cd "$ROOT" && find pyproject.toml setup.py protos -type f \( -name '*.toml' -o -name '*.py' \
      -o -name '*.proto' -o -name '*.yaml' \) -not -path '*/__pycache__/*' -print | LC_ALL=C sort |
    while read -r f; do printf '%s\n' "$f"; sha256sum <"$f"; done) | sha256sum | cut -d' ' -f1
}

py_ok() {  # usable interpreter, >= 3.11
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON on PATH (run scripts/setup-system.sh)"
py_ok "$PYTHON" || die "$PYTHON is $("$PYTHON" -V 2>&1); need Python >= 3.11 with venv"

want="$(inputs_hash)"
if py_ok "$VENV/bin/python" && [ -x "$VENV/bin/vws" ] && [ -f "$ROOT/services/v1/__init__.py" ] &&
   [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
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
