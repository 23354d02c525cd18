"""Anchor for the VM benchmarks: the test guest (scripts/build-guest.sh) booted by a bare
`qemu-system-x86_64` (TCG, no libvirt), timed from launch until the guest prints
"vws-guest: ready" on its serial console, which it does once qemu-ga holds its virtio port.

The guest agent's port is attached (a unix socket nobody connects to) so that "ready" means
the same as under libvirt with the guest-agent channel. Run directly for the median of 5:
    python3 bench/guest_boot.py [GUEST_DIR]
"""
from __future__ import annotations

import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY = b"vws-guest: ready"
DEFAULT_GUEST_DIR = os.environ.get("VWS_GUEST_DIR", "/var/lib/vws/guest")
CMDLINE = "console=ttyS0 quiet"


def qemu_command(guest_dir: str | os.PathLike, memory_mib: int, agent_socket: str,
                 accel: str = "tcg") -> list[str]:
    g = Path(guest_dir)
    return [
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        "-accel", accel, "-m", str(memory_mib), "-smp", "1",
        "-kernel", str(g / "vmlinuz"), "-initrd", str(g / "initrd.img"),
        "-append", CMDLINE,
        "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=qga,path={agent_socket},server=on,wait=off",
        "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
    ]


def bare_qemu_boot_seconds(guest_dir: str | os.PathLike = DEFAULT_GUEST_DIR,
                           memory_mib: int = 128, timeout: float = 120.0) -> float:
    """Seconds from launching QEMU until "vws-guest: ready" appears on the serial output.
    QEMU is killed afterwards. Raises RuntimeError (with the console's tail) if the line does
    not come within `timeout` or QEMU exits first."""
    for f in ("vmlinuz", "initrd.img"):
        if not (Path(guest_dir) / f).is_file():
            raise FileNotFoundError(f"{Path(guest_dir) / f} (run scripts/build-guest.sh)")
    with tempfile.TemporaryDirectory(prefix="vws-bare-qemu-") as tmp:
        cmd = qemu_command(guest_dir, memory_mib, os.path.join(tmp, "qga.sock"))
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        out = b""
        try:
            os.set_blocking(proc.stdout.fileno(), False)
            sel = selectors.DefaultSelector()
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = start + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {READY.decode()!r} within {timeout:.0f}s; console tail:\n"
                                       + out[-2000:].decode(errors="replace"))
                if not sel.select(left):
                    continue
                chunk = proc.stdout.read()
                if chunk:
                    out += chunk
                    if READY in out:
                        return time.monotonic() - start
                elif chunk == b"":  # EOF: QEMU is gone
                    proc.wait()
                    raise RuntimeError(f"qemu exited with {proc.returncode} before {READY.decode()!r}; "
                                       "output tail:\n" + out[-2000:].decode(errors="replace"))
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    guest = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GUEST_DIR
    runs = [bare_qemu_boot_seconds(guest) for _ in range(5)]
    print(" ".join(f"{s:.2f}" for s in runs))
    print(f"bare qemu (TCG, 128 MiB) launch -> ready: median {statistics.median(runs):.2f}s")
