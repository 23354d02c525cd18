#!/usr/bin/env bash
# Builds the test guest for VM workspaces from Debian packages only (nothing from outside the
# Debian registry), into OUT = $1, else $VWS_GUEST_DIR, else /var/lib/vws/guest:
#
#   vmlinuz        Debian's cloud kernel (the linux-image-*-cloud-amd64 that the
#                  linux-image-cloud-amd64 metapackage depends on; `apt-get download`, `dpkg -x`)
#   initrd.img     gzip'd cpio: busybox-static, qemu-ga and its shared libraries, the virtio
#                  modules and an /init (below). Direct boot: -kernel vmlinuz -initrd initrd.img
#                  -append 'console=ttyS0 quiet'
#   disk.qcow2     64 MiB disk that boots by itself (<boot dev='hd'/>, no external kernel): the
#                  whole disk is one ext4 file system (no partition table) holding the same
#                  userland plus /boot/{vmlinuz,initrd.img} and extlinux in its boot sector;
#                  extlinux boots the kernel with root=/dev/vda. Use it through an overlay:
#                  qemu-img create -f qcow2 -F qcow2 -b disk.qcow2 overlay.qcow2
#   manifest.json  kernel version, command lines, and each file's size and sha256
#
# The guest: /init mounts proc/sys/devtmpfs, loads the modules in dependency order, switches
# into root=/dev/vda (or vws.root=DEV) when given one, brings up lo and eth0 (vws.ip=A.B.C.D/N,
# vws.gw=A.B.C.D optional), and hands over to busybox init, which runs busybox acpid (power
# button -> power off) and qemu-ga on the virtio port named org.qemu.guest_agent.0. Once the
# agent holds its port the guest prints exactly one line "vws-guest: ready" on the console
# (ttyS0). It powers off cleanly on an ACPI power button (virsh shutdown --mode acpi) and on
# qemu-ga's guest-shutdown (virsh shutdown --mode agent), through /sbin/shutdown.
#
# Idempotent: skips when the outputs exist and nothing they are made from changed (this
# script, the kernel package version, the busybox/qemu-ga/extlinux files copied in). Run as
# root (the disk's boot loader is installed through a loop mount).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

OUT="${1:-${VWS_GUEST_DIR:-/var/lib/vws/guest}}"
DISK_MIB="${VWS_GUEST_DISK_MIB:-64}"
META=linux-image-cloud-amd64
# Modules to load, dependencies found from each module's own `depends=`; built-in ones are
# skipped (in Debian's cloud kernel ext4, jbd2, mbcache, crc16 and crc32c are built in).
WANT_MODULES=(virtio_pci virtio_console virtio_net virtio_blk virtio_rng virtio_balloon
              ext4 evdev button)
SCRIPT="$(readlink -f "${BASH_SOURCE[0]}")"

[ "$(id -u)" -eq 0 ] || die "build-guest.sh must run as root (loop mount for the boot loader)"
for c in apt-get apt-cache dpkg dpkg-query cpio gzip mkfs.ext4 qemu-img extlinux losetup \
         mount umount ldd sha256sum flock; do
  command -v "$c" >/dev/null 2>&1 || die "no $c (run scripts/setup-system.sh)"
done
BUSYBOX="$(command -v busybox || true)"
QGA=/usr/sbin/qemu-ga
[ -x "$BUSYBOX" ] || die "no busybox (package busybox-static; run scripts/setup-system.sh)"
[ -x "$QGA" ] || die "no $QGA (package qemu-guest-agent; run scripts/setup-system.sh)"
SYSLINUX_BIOS=/usr/lib/syslinux/modules/bios
[ -f "$SYSLINUX_BIOS/ldlinux.c32" ] || die "no $SYSLINUX_BIOS/ldlinux.c32 (package syslinux-common)"

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

# Host files copied into the guest: binaries plus every shared library ldd finds for them.
host_files() {
  local f
  for f in "$BUSYBOX" "$QGA"; do
    printf '%s\n' "$f"
    ldd "$f" 2>/dev/null | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' || true
  done | sort -u
}

# The kernel the metapackage points at now (needs apt lists: apt-get update). apt-cache takes
# seconds where its binary cache is disabled (Docker images), so the answer is remembered
# against the lists' names, sizes and times.
lists_key="$(stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -d' ' -f1)"
KPKG="" KPKG_VER=""
if [ -f "$OUT/.kernel" ] && [ "$(sed -n 1p "$OUT/.kernel")" = "$lists_key" ]; then
  read -r KPKG KPKG_VER < <(sed -n 2p "$OUT/.kernel")
else
  # "Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
  read -r KPKG KPKG_VER < <(apt-cache show --no-all-versions "$META" 2>/dev/null |
    sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1) || true
  if [ -n "$KPKG" ] && [ -z "$KPKG_VER" ]; then
    KPKG_VER="$(apt-cache policy "$KPKG" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')"
  fi
fi
if [ -z "$KPKG" ] || [ -z "$KPKG_VER" ] || [ "$KPKG_VER" = "(none)" ]; then
  if [ -f "$OUT/.inputs" ] && [ -f "$OUT/manifest.json" ]; then
    step "guest" "$OUT kept: cannot resolve $META (apt lists missing? apt-get update)"
    exit 0
  fi
  die "cannot resolve $META to a kernel package (apt-get update first)"
fi
printf '%s\n%s %s\n' "$lists_key" "$KPKG" "$KPKG_VER" >"$OUT/.kernel"
KVER="${KPKG#linux-image-}"

mapfile -t HOST_FILES < <(host_files)
# The FFT harness as a static executable (issue 7's benchmark runs it inside guests).
FFT_DIR="$OUT/.cache/fft"
"$ROOT/scripts/build-fft.sh" "$FFT_DIR" >/dev/null
FFT="$FFT_DIR/vws-fft"
INPUTS="$(
  {
    sha256sum "$SCRIPT" | cut -d' ' -f1
    sha256sum "$FFT" | cut -d' ' -f1
    echo "$KPKG $KPKG_VER disk=${DISK_MIB}M"
    sha256sum "${HOST_FILES[@]}" "$(command -v extlinux)" "$SYSLINUX_BIOS/ldlinux.c32"
  } | sha256sum | cut -d' ' -f1
)"
OUTPUTS=(vmlinuz initrd.img disk.qcow2 manifest.json)
have_all=yes
for f in "${OUTPUTS[@]}"; do [ -s "$OUT/$f" ] || have_all=no; done
if [ "$have_all" = yes ] && [ "$(cat "$OUT/.inputs" 2>/dev/null)" = "$INPUTS" ]; then
  step "guest" "$KVER in $OUT (skip)"
  exit 0
fi

start="$(now)"
LOG="${TMPDIR:-/tmp}/vws-build-guest.log"
: >"$LOG"
W="$(mktemp -d "${TMPDIR:-/tmp}/vws-guest.XXXXXX")"
MNT="$W/mnt"
cleanup() {
  if [ -d "$MNT" ] && grep -q " $MNT " /proc/mounts 2>/dev/null; then umount "$MNT" || umount -l "$MNT"; fi
  rm -rf "$W"
}
trap cleanup EXIT

# --- kernel: the package, cached beside the outputs so a rebuild needs no download ----------
CACHE="$OUT/.cache"
DEB="$CACHE/${KPKG}_${KPKG_VER//:/%3a}_amd64.deb"
if [ ! -s "$DEB" ]; then
  mkdir -p "$CACHE"
  rm -f "$CACHE"/linux-image-*.deb
  # apt-get download writes to the current directory; as root it warns that _apt cannot
  # write there (harmless), so download into a directory _apt may write to.
  chmod 755 "$W"; mkdir -m 777 "$W/dl"
  (cd "$W/dl" && logged "$LOG" apt-get download -q -o DPkg::Lock::Timeout=300 "$KPKG=$KPKG_VER")
  mv "$W/dl/"*.deb "$DEB"
fi
dpkg -x "$DEB" "$W/k"
KDIR="$W/k/lib/modules/$KVER"
[ -f "$W/k/boot/vmlinuz-$KVER" ] || die "$DEB has no boot/vmlinuz-$KVER"
[ -d "$KDIR/kernel" ] || die "$DEB has no lib/modules/$KVER/kernel"

# --- the userland tree, shared by the initramfs and the disk's root file system -------------
R="$W/root"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc/vws,etc/acpi/PWRF,etc/acpi/PWRB,proc,sys,dev} \
  "$R"/{run,tmp,var/run,var/log,var/lib,root,newroot,boot,lib/modules/"$KVER"}
chmod 1777 "$R/tmp"
cp "$BUSYBOX" "$R/bin/busybox"
for a in $("$BUSYBOX" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
done
ln -sf ../bin/busybox "$R/sbin/init"
cp "$QGA" "$R/usr/sbin/qemu-ga"
install -m 0755 "$FFT" "$R/usr/bin/vws-fft"
for f in "${HOST_FILES[@]}"; do
  case "$f" in "$BUSYBOX"|"$QGA") continue ;; esac
  mkdir -p "$R$(dirname "$f")"
  cp -L "$f" "$R$f"
done
# Debian 12 is merged-/usr: ldd may name /lib/... or /usr/lib/...; make both resolve.
if [ -d "$R/usr/lib/x86_64-linux-gnu" ] && [ ! -e "$R/lib/x86_64-linux-gnu" ]; then
  ln -s ../usr/lib/x86_64-linux-gnu "$R/lib/x86_64-linux-gnu"
fi
[ -e "$R/lib64/ld-linux-x86-64.so.2" ] || die "no dynamic loader copied for qemu-ga"
mknod -m 600 "$R/dev/console" c 5 1
mknod -m 666 "$R/dev/null" c 1 3

# Kernel modules: closure over `depends=`, in dependency order, stored flat as NAME.ko.
declare -A MODPATH=() BUILTIN=() SEEN=()
while IFS= read -r p; do
  n="$(basename "$p")"; n="${n%%.ko*}"; MODPATH[${n//-/_}]="$p"
done < <(find "$KDIR/kernel" -name '*.ko*')
while IFS= read -r p; do
  n="$(basename "$p")"; n="${n%%.ko*}"; BUILTIN[${n//-/_}]=1
done <"$KDIR/modules.builtin"
MOD_ORDER=()
add_module() {
  local m="${1//-/_}" p d deps
  [ -z "${SEEN[$m]:-}" ] || return 0
  SEEN[$m]=1
  [ -z "${BUILTIN[$m]:-}" ] || return 0
  p="${MODPATH[$m]:-}"
  [ -n "$p" ] || die "kernel $KVER has no module $m (neither built in nor a .ko)"
  case "$p" in
    *.ko) cp "$p" "$R/lib/modules/$KVER/$m.ko" ;;
    *.ko.xz) xz -dc "$p" >"$R/lib/modules/$KVER/$m.ko" ;;
    *.ko.zst) zstd -qdc "$p" >"$R/lib/modules/$KVER/$m.ko" ;;
    *) die "unknown module format: $p" ;;
  esac
  deps="$(tr '\0' '\n' <"$R/lib/modules/$KVER/$m.ko" | sed -n 's/^depends=//p' | head -n1)"
  for d in ${deps//,/ }; do add_module "$d"; done
  MOD_ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do add_module "$m"; done
printf '%s\n' "${MOD_ORDER[@]}" >"$R/etc/vws/modules"

echo vws-guest >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvws-guest\n' >"$R/etc/hosts"
echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
echo 'PATH=/sbin:/bin:/usr/sbin:/usr/bin; export PATH' >"$R/etc/profile"

cat >"$R/init" <<'EOF'
#!/bin/sh
# vws test guest, PID 1: mounts, modules, optional switch into root=DEV, network, then busybox
# init (/etc/inittab) runs qemu-ga and acpid for good.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
# After switch_root these are already there (moved from the initramfs).
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/class ] || mount -t sysfs sysfs /sys
grep -q '^devtmpfs /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev

# Modules in dependency order; a second pass catches anything whose dependency failed first.
kver=$(uname -r)
for pass in 1 2; do
  while read -r m; do
    [ -d "/sys/module/$m" ] || insmod "/lib/modules/$kver/$m.ko" 2>/dev/null
  done </etc/vws/modules
done

root= ip= gw=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    root=/dev/*) root=${arg#root=} ;;
    vws.root=*) root=${arg#vws.root=} ;;
    vws.ip=*) ip=${arg#vws.ip=} ;;
    vws.gw=*) gw=${arg#vws.gw=} ;;
  esac
done

# From the initramfs (it carries /etc/vws/initramfs), switch into the disk when asked to.
if [ -n "$root" ] && [ -e /etc/vws/initramfs ]; then
  i=0
  while [ ! -b "$root" ] && [ $i -lt 200 ]; do usleep 25000; i=$((i + 1)); done
  if mount -t ext4 "$root" /newroot; then
    for d in dev proc sys; do mount -o move "/$d" "/newroot/$d"; done
    exec switch_root /newroot /init
  fi
  echo "vws-guest: cannot mount root $root; staying in the initramfs" >/dev/console
fi

mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mkdir -p /run /var/run /tmp
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=755 tmpfs /var/run
mount -t tmpfs -o mode=1777 tmpfs /tmp
hostname -F /etc/hostname
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  [ -z "$ip" ] || ip addr add "$ip" dev eth0
  [ -z "$gw" ] || ip route add default via "$gw"
fi
exec /sbin/init
EOF

cat >"$R/etc/inittab" <<'EOF'
# busybox init: the guest agent and acpid for good; a shell on the console after "ready".
::respawn:/sbin/vws-agent
::respawn:/bin/acpid -f -l /dev/null
::respawn:/sbin/vws-console
::ctrlaltdel:/sbin/vws-poweroff
::shutdown:/bin/sync
EOF

cat >"$R/sbin/vws-agent" <<'EOF'
#!/bin/sh
# Starts qemu-ga on the virtio port named org.qemu.guest_agent.0 (no udev here, so the device
# is /dev/vportNpM) and, the first time the agent holds the port open, prints the ready line.
port= i=0
while :; do
  for n in /sys/class/virtio-ports/*/name; do
    [ "$(cat "$n" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
    port=/dev/$(basename "$(dirname "$n")")
  done
  [ -n "$port" ] && [ -c "$port" ] && break
  i=$((i + 1))
  [ $i -eq 200 ] && echo "vws-guest: no virtio port org.qemu.guest_agent.0 yet; still waiting" >/dev/console
  usleep 25000
done
/usr/sbin/qemu-ga -m virtio-serial -p "$port" -l /dev/null &
pid=$!
if [ ! -e /run/vws-ready ]; then
  i=0
  while [ $i -lt 400 ] && ! ls -l "/proc/$pid/fd" 2>/dev/null | grep -q " -> $port\$"; do
    usleep 10000; i=$((i + 1))
  done
  : >/run/vws-ready
  echo "vws-guest: ready" >/dev/console
fi
wait $pid
EOF

cat >"$R/sbin/vws-console" <<'EOF'
#!/bin/sh
# A root shell on the console, once the ready line is out (so nothing shares its line).
while [ ! -e /run/vws-ready ]; do usleep 100000; done
exec /bin/cttyhack /bin/sh -l
EOF

cat >"$R/sbin/vws-poweroff" <<'EOF'
#!/bin/sh
# Clean, immediate power-off (or reboot/halt: $1): sync, root read-only, then the syscall.
# Without busybox init's round trip, which would add two seconds of waiting.
sync
mount -o remount,ro / 2>/dev/null
sync
case "${1:-poweroff}" in
  reboot) exec /bin/busybox reboot -f ;;
  halt) exec /bin/busybox halt -f ;;
  *) exec /bin/busybox poweroff -f ;;
esac
EOF

cat >"$R/sbin/shutdown" <<'EOF'
#!/bin/sh
# qemu-ga's guest-shutdown runs `/sbin/shutdown -h -P|-H|-r +0 "message"`.
action=poweroff
for a in "$@"; do
  case "$a" in
    -r) action=reboot ;;
    -H) action=halt ;;
  esac
done
exec /sbin/vws-poweroff "$action"
EOF

# busybox acpid maps the power button's KEY_POWER to "PWRF" (or PWRB) and runs
# /etc/acpi/PWRF/00000080.
for b in PWRF PWRB; do
  printf '#!/bin/sh\nexec /sbin/vws-poweroff\n' >"$R/etc/acpi/$b/00000080"
done
chmod 755 "$R/init" "$R/sbin/vws-agent" "$R/sbin/vws-console" "$R/sbin/vws-poweroff" \
  "$R/sbin/shutdown" "$R/etc/acpi/PWRF/00000080" "$R/etc/acpi/PWRB/00000080"

# --- initrd.img -------------------------------------------------------------------------------
NEW="$W/out"
mkdir -p "$NEW"
cp "$W/k/boot/vmlinuz-$KVER" "$NEW/vmlinuz"
: >"$R/etc/vws/initramfs"
# Same inputs, same bytes: fixed times, inode numbers and owners in the archive. (Not so the
# disk: the loop mount and extlinux write times and the mount point into it.)
find "$R" -exec touch -h -d @1 {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
  gzip -6 -n >"$NEW/initrd.img"
rm "$R/etc/vws/initramfs"

# --- disk: one ext4 file system over the whole disk, extlinux in its boot sector ---------------
cp "$NEW/vmlinuz" "$R/boot/vmlinuz"
cp "$NEW/initrd.img" "$R/boot/initrd.img"
mkdir -p "$R/boot/extlinux"
cat >"$R/boot/extlinux/extlinux.conf" <<'EOF'
SERIAL 0 115200
DEFAULT vws
PROMPT 0
TIMEOUT 0
LABEL vws
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND root=/dev/vda console=ttyS0 quiet
EOF
RAW="$W/disk.raw"
truncate -s "${DISK_MIB}M" "$RAW"
# extlinux 6.04 reads ext4 only without the 64bit feature and with 4 KiB blocks (mke2fs picks
# 1 KiB for a disk this small: "Loading /boot/vmlinuz failed: I/O error").
logged "$LOG" mkfs.ext4 -q -F -L vws-root -b 4096 -O ^64bit -E root_owner=0:0 -d "$R" "$RAW"
mkdir -p "$MNT"
logged "$LOG" mount -o loop "$RAW" "$MNT"
logged "$LOG" extlinux --install "$MNT/boot/extlinux"
umount "$MNT"
logged "$LOG" qemu-img convert -f raw -O qcow2 "$RAW" "$NEW/disk.qcow2"

# --- manifest -----------------------------------------------------------------------------------
{
  printf '{\n  "kernel_package": "%s",\n  "kernel_package_version": "%s",\n' "$KPKG" "$KPKG_VER"
  printf '  "kernel_version": "%s",\n' "$KVER"
  printf '  "direct_boot_cmdline": "console=ttyS0 quiet",\n'
  printf '  "disk_boot_cmdline": "root=/dev/vda console=ttyS0 quiet",\n'
  printf '  "ready_line": "vws-guest: ready",\n'
  printf '  "agent_channel": "org.qemu.guest_agent.0",\n'
  printf '  "modules": [%s],\n' "$(printf '"%s", ' "${MOD_ORDER[@]}" | sed 's/, $//')"
  printf '  "files": {\n'
  sep=""
  for f in vmlinuz initrd.img disk.qcow2; do
    printf '%s    "%s": {"size": %d, "sha256": "%s"}' "$sep" "$f" \
      "$(stat -c %s "$NEW/$f")" "$(sha256sum "$NEW/$f" | cut -d' ' -f1)"
    sep=$',\n'
  done
  printf '\n  }\n}\n'
} >"$NEW/manifest.json"

# --- into place: the fingerprint last, so an interrupted build is redone ----------------------
rm -f "$OUT/.inputs"
for f in "${OUTPUTS[@]}"; do mv -f "$NEW/$f" "$OUT/$f"; done
chmod 644 "${OUTPUTS[@]/#/$OUT/}"
echo "$INPUTS" >"$OUT/.inputs"
sizes="initrd $(du -h "$OUT/initrd.img" | cut -f1), disk.qcow2 $(du -h "$OUT/disk.qcow2" | cut -f1)"
step "guest" "built $KVER into $OUT: $sizes ($(elapsed "$start"))"
