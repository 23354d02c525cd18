#!/usr/bin/env bash
# Debian packages the project needs. Does nothing (and needs no network) when they are all
# installed; otherwise runs `apt-get update` (only if the lists are older than a day) and one
# `apt-get install`.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PACKAGES=(
  passwd                 # useradd/userdel: workspace accounts
  util-linux             # setpriv, runuser, nsenter (sandbox workspaces)
  bubblewrap             # bwrap: sandbox workspaces' namespaces
  iproute2               # ip, tc: sandbox workspaces' veth pairs and bandwidth shaping
  cron                   # crontab
  procps                 # ps, pkill
  psmisc                 # fuser, killall (tests find what holds a port or mount)
  e2fsprogs              # mkfs.ext4: workspaces' own filesystems (disk limits)
  mount                  # mount, losetup: loop-mounting them
  postgresql             # server for the tests (throwaway clusters)
  protobuf-compiler      # protoc: contract tests generate stubs for another language
  protobuf-compiler-grpc # grpc_cpp_plugin
  libprotobuf-dev
  libgrpc++-dev
  pkg-config
  g++
  make
  qemu-system-x86        # qemu-system-x86_64: VM workspaces (TCG here, KVM where the CPU has it)
  qemu-utils             # qemu-img: VM images' qcow2 overlays
  libvirt-daemon-system  # libvirtd, virtlogd (scripts/setup-libvirt.sh starts them)
  libvirt-clients        # virsh, virt-xml-validate
  libvirt-dev            # libvirt-python builds against it (with pkg-config)
  dnsmasq-base           # libvirt's own networks, should a domain use one
  busybox-static         # test guest's userland (scripts/build-guest.sh)
  qemu-guest-agent       # qemu-ga, copied into the test guest with its libraries
  cpio                   # test guest's initramfs
  extlinux               # boot loader of the test guest's self-booting disk
  syslinux-common        # extlinux's ldlinux.c32
  b3sum                  # fast content hashes of images
  rsync                  # copying workspace files and images
  openssh-server         # sshd: the transfer benchmark's encrypted anchor (rsync -e ssh between namespaces)
  openssh-client         # ssh, ssh-keygen: its client side
  libxml2-utils          # xmllint: virt-xml-validate checks domain XML against libvirt's schema (tests)
  voms-clients           # voms-proxy-fake: the tests' RFC 3820 proxies carrying VOMS attribute certificates
  globus-proxy-utils     # grid-proxy-init: plain RFC 3820 proxies (tests)
  openssl                # the tests' grid CA directory (subject hashes cross-checked with openssl x509)
)
# Debian's own python3 needs python3-venv for `python3 -m venv` (ensurepip); a pyenv or other
# python3 on PATH brings its own. No python3 at all: Debian's (3.11 on Debian 12).
case "$(readlink -f "$(command -v python3 2>/dev/null || echo /usr/bin/python3)")" in
  /usr/bin/*) PACKAGES+=(python3 python3-venv) ;;
esac
# Node only if the machine has none (a NodeSource or other install is fine): for the buf CLI.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

missing_packages() {
  local p status
  for p in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [ "$status" = installed ] || printf '%s\n' "$p"
  done
}

lists_fresh() {
  # apt-get update re-touches every *InRelease it checks, even when unchanged.
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -type f -name '*Release' -cmin -1440 -print -quit 2>/dev/null)" ] &&
    [ -n "$(find /var/lib/apt/lists -maxdepth 1 -type f -name '*_Packages*' -print -quit 2>/dev/null)" ]
}

command -v dpkg-query >/dev/null 2>&1 || die "not a Debian system (no dpkg-query)"
mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -eq 0 ]; then
  step "apt packages" "all ${#PACKAGES[@]} installed (skip)"
  exit 0
fi

start="$(now)"
LOG="${TMPDIR:-/tmp}/vws-setup-apt.log"
APT=(apt-get -y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Use-Pty=0)
updated=no
if ! lists_fresh; then
  logged "$LOG" as_root "${APT[@]}" update
  updated=yes
fi
if ! as_root "${APT[@]}" install --no-install-recommends "${MISSING[@]}" >>"$LOG" 2>&1; then
  # Stale lists (a package version gone from the mirror): refresh once and retry.
  [ "$updated" = yes ] && { tail -n 40 "$LOG" >&2; die "apt-get install failed (log: $LOG)"; }
  logged "$LOG" as_root "${APT[@]}" update
  logged "$LOG" as_root "${APT[@]}" install --no-install-recommends "${MISSING[@]}"
fi
step "apt packages" "installed ${MISSING[*]} ($(elapsed "$start"), update: $updated)"
