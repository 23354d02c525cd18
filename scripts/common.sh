# Shared helpers for the set-up scripts; sourced, not run.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TOOLS="${TOOLS:-$ROOT/.tools}"
# The buf CLI, from npm (@bufbuild/buf ships the native binary as a per-platform package).
BUF_VERSION="${BUF_VERSION:-1.75.0}"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false

# One line per step: `step "what" "detail"`.
step() { printf '[setup] %-16s %s\n' "$1" "${2:-}"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@" || die "needs root for: $*"
  else die "needs root for: $* (run as root or install sudo)"
  fi
}

# Runs "$@" with its output in LOG; shows the log's tail and fails if it fails.
logged() {
  local log="$1"; shift
  if ! "$@" >"$log" 2>&1; then
    printf '[setup] ERROR: %s failed; last lines of %s:\n' "$*" "$log" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
