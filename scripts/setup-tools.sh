#!/usr/bin/env bash
# Developer tools that Debian lacks, installed under .tools: the buf CLI (protos lint/format),
# from npm at a pinned version. Skips when the pinned version is already there.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BUF="$TOOLS/node_modules/.bin/buf"
LOG="${TMPDIR:-/tmp}/vws-setup-tools.log"

if [ -x "$BUF" ] && [ "$("$BUF" --version 2>/dev/null)" = "$BUF_VERSION" ]; then
  step "buf" "$BUF_VERSION present (skip)"
  exit 0
fi
command -v npm >/dev/null 2>&1 || die "no npm (run scripts/setup-system.sh)"

start="$(now)"
mkdir -p "$TOOLS"
logged "$LOG" npm install --no-save --prefix "$TOOLS" "@bufbuild/buf@$BUF_VERSION"
[ -x "$BUF" ] || die "npm install left no $BUF"
got="$("$BUF" --version 2>&1)" || die "$BUF does not run: $got"
[ "$got" = "$BUF_VERSION" ] || die "$BUF reports version $got, want $BUF_VERSION"
step "buf" "installed $BUF_VERSION into ${TOOLS#"$ROOT"/} ($(elapsed "$start"))"
