#!/usr/bin/env bash
# libvirt for VM workspaces, on a host without systemd: makes /dev/kvm usable by QEMU, has QEMU
# run as root, and starts virtlogd and libvirtd by hand when they are not running; waits until
# `virsh -c qemu:///system version` answers. Idempotent; about 0.1 s when everything is in place.
#
# - /dev/kvm: group kvm, mode 660. When libvirt's QEMU user cannot open /dev/kvm, libvirt
#   re-probes QEMU's capabilities on every domain start (~44 s per `virsh create` here).
# - /etc/libvirt/qemu.conf: user = "root", group = "root". The manager runs as root and keeps
#   its image cache and overlays under /var/lib/vws/<manager>/vm/ (root-owned, in root-only
#   directories); QEMU as root reads them whatever their mode, with no chown/ACL dance.
#   dynamic_ownership stays at libvirt's default (1): libvirt labels the files root:root for
#   the domain's lifetime, which for root-owned files changes nothing. (Had QEMU kept running
#   as libvirt-qemu:kvm, every directory on the way to an image would need o+x or group kvm,
#   and every image group kvm with g+r(w); dynamic_ownership would chown the images
#   themselves but not the directories.) libvirtd is restarted when this file is changed.
# - libvirt's "default" network (virbr0, dnsmasq) is neither started nor needed: vws domains
#   bring their own interface definitions. Its autostart, if an admin set it, is left alone.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

URI=qemu:///system
QEMU_CONF=/etc/libvirt/qemu.conf
LOG="${TMPDIR:-/tmp}/vws-setup-libvirt.log"

for c in libvirtd virtlogd virsh qemu-system-x86_64; do
  command -v "$c" >/dev/null 2>&1 || die "no $c (run scripts/setup-system.sh)"
done
[ -f "$QEMU_CONF" ] || die "no $QEMU_CONF (package libvirt-daemon-driver-qemu)"

start="$(now)"
did=()

# /dev/kvm readable by the QEMU user (and by group kvm, should QEMU ever run as libvirt-qemu).
if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
  if [ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]; then
    as_root chgrp kvm /dev/kvm
    as_root chmod 660 /dev/kvm
    did+=("/dev/kvm kvm:660")
  fi
fi

# QEMU runs as root. Active user/group lines other than root are commented out, ours appended.
conf_changed=no
other_lines() { # active user/group settings other than ours
  grep -E '^[[:space:]]*(user|group)[[:space:]]*=' "$QEMU_CONF" | grep -vx -e 'user = "root"' -e 'group = "root"'
}
if ! grep -qx 'user = "root"' "$QEMU_CONF" || ! grep -qx 'group = "root"' "$QEMU_CONF" || other_lines >/dev/null; then
  [ -e "$QEMU_CONF.vws-orig" ] || as_root cp -p "$QEMU_CONF" "$QEMU_CONF.vws-orig"
  as_root sed -i -E 's/^([[:space:]]*(user|group)[[:space:]]*=)/# (vws) \1/' "$QEMU_CONF"
  as_root tee -a "$QEMU_CONF" >/dev/null <<'EOF'

# vws (scripts/setup-libvirt.sh): QEMU runs as root, so it can read the manager's images
# under /var/lib/vws whatever their ownership.
user = "root"
group = "root"
EOF
  conf_changed=yes
  did+=("qemu.conf: QEMU as root")
fi

as_root mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt

pid_of() { # pid from the daemon's pid file if that process is alive and is the daemon
  local f="/run/$1.pid" pid
  [ -r "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null)"
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && printf '%s\n' "$pid"
}
daemon_pid() { pid_of "$1" || pgrep -x "$1" | head -n1; }

start_daemon() { # detached from our stdio and session, so callers' pipes do not stay open
  as_root setsid "$1" -d </dev/null >>"$LOG" 2>&1 || die "$1 -d failed (log: $LOG)"
}

if [ -z "$(daemon_pid virtlogd)" ]; then
  start_daemon virtlogd
  did+=("started virtlogd")
fi

pid="$(daemon_pid libvirtd || true)"
if [ -n "$pid" ] && [ "$conf_changed" = yes ]; then
  as_root kill -TERM "$pid"
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ ! -d "/proc/$pid" ] || die "libvirtd ($pid) did not stop for the qemu.conf change"
  pid=""
  did+=("stopped libvirtd")
fi
if [ -z "$pid" ]; then
  start_daemon libvirtd
  did+=("started libvirtd")
fi

# Wait until the QEMU driver answers (the first start probes QEMU's capabilities).
ok=no
for _ in $(seq 300); do
  if out="$(virsh -c "$URI" version 2>&1)"; then ok=yes; break; fi
  sleep 0.1
done
[ "$ok" = yes ] || die "virsh -c $URI version does not answer after 30 s: $out"
hv="$(printf '%s\n' "$out" | sed -n 's/^Running hypervisor: //p')"

if [ "${#did[@]}" -eq 0 ]; then
  step "libvirt" "running, $hv (skip)"
else
  step "libvirt" "$(IFS=,; echo "${did[*]}" | sed 's/,/, /g'); $hv ($(elapsed "$start"))"
fi
