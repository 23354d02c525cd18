#!/usr/bin/env bash
# Builds vws-fft, the FFT benchmark harness (issue 7) as a static executable for guests and
# workspaces without Python, from native/fft_main.c and native/fft_kernel.c:
#     scripts/build-fft.sh [OUT]      -> OUT/vws-fft (default OUT: .build/ in the repository)
# Skips when OUT/vws-fft is newer than both sources (and the kernel's header). Needs gcc and a
# static libc/libm (libc6-dev on Debian). Nothing here goes into git.
set -euo pipefail
# shellcheck source=scripts/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OUT="${1:-$ROOT/.build}"
CC="${CC:-gcc}"
BIN="$OUT/vws-fft"
SRCS=("$ROOT/native/fft_main.c" "$ROOT/native/fft_kernel.c")
DEPS=("${SRCS[@]}" "$ROOT/native/fft_kernel.h")

for f in "${DEPS[@]}"; do [ -f "$f" ] || die "missing source $f"; done

up_to_date() {
  [ -x "$BIN" ] || return 1
  local f
  for f in "${DEPS[@]}"; do [ "$BIN" -nt "$f" ] || return 1; done
}

if up_to_date; then
  step "fft" "$BIN up to date (skip)"
  exit 0
fi

command -v "$CC" >/dev/null 2>&1 || die "$CC not found (apt-get install gcc libc6-dev)"
start="$(now)"
mkdir -p "$OUT"
# The default output directory lives in the repository: keep it out of git.
[ "$OUT" != "$ROOT/.build" ] || [ -f "$OUT/.gitignore" ] || printf '*\n' >"$OUT/.gitignore"
tmp="$(mktemp "$OUT/.vws-fft.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
if ! err="$("$CC" -O3 -static -o "$tmp" "${SRCS[@]}" -lm 2>&1)"; then
  printf '%s\n' "$err" >&2
  die "$CC -O3 -static failed for vws-fft (static libc missing? apt-get install libc6-dev)"
fi
if command -v file >/dev/null 2>&1; then
  case "$(file -b "$tmp")" in
    *"statically linked"*) ;;
    *) die "vws-fft is not statically linked: $(file -b "$tmp")" ;;
  esac
fi
chmod 0755 "$tmp"
mv -f "$tmp" "$BIN"
trap - EXIT
step "fft" "built $BIN, static, $(du -k "$BIN" | cut -f1) KiB ($(elapsed "$start"))"
