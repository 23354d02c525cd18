"""Does KVM really run guests here? /dev/kvm answering its API version is not enough: on a
host whose CPU offers no hardware virtualisation a KVM guest hangs (seen on our CI machines,
where even a one-instruction guest runs but a real kernel never boots). So the probe asks for
the CPU's virtualisation flag (vmx or svm) and then makes a one-instruction guest (HLT, in real
mode) and runs it; it must come back with KVM_EXIT_HLT. That part runs in a child process under
a timeout, because KVM_RUN may never return.

`python -m vws.manager.backends.vm.kvmprobe` prints `ok` and exits 0 when the guest ran."""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import subprocess
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS, KVM_SET_REGS = 0x8090AE81, 0x4090AE82
KVM_GET_SREGS, KVM_SET_SREGS = 0x8138AE83, 0x4138AE84
KVM_EXIT_HLT = 5
GUEST_ADDR = 0x1000


def _run_guest() -> str:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(kvm, KVM_GET_API_VERSION, 0) != 12:
        return "unexpected KVM API version"
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, 0x1000, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem.write(b"\xf4")  # hlt
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, struct.pack("IIQQQ", 0, 0, GUEST_ADDR, 0x1000, addr))
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
    run = mmap.mmap(vcpu, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs, True)
    struct.pack_into("Q", sregs, 0, 0)   # cs.base
    struct.pack_into("H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)
    struct.pack_into("QQ", regs, 128, GUEST_ADDR, 2)  # rip, rflags
    fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))
    fcntl.ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("I", run, 8)[0]
    return "ok" if reason == KVM_EXIT_HLT else f"the test guest stopped with exit reason {reason}, not HLT"


def kvm_works(timeout: float = 3.0) -> tuple[bool, str]:
    """(True, "") when a KVM guest runs here; otherwise (False, why)."""
    if not os.path.exists("/dev/kvm"):
        return False, "no /dev/kvm"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "vmx" not in flags and "svm" not in flags:
        return False, "/dev/kvm is there but the CPU offers no hardware virtualisation (no vmx or svm flag)"
    try:
        r = subprocess.run([sys.executable, "-m", "vws.manager.backends.vm.kvmprobe"], capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"/dev/kvm is there but a one-instruction KVM guest did not finish within {timeout:g}s"
    out = (r.stdout.strip() or r.stderr.strip().splitlines()[-1:] or ["no output"])
    out = out if isinstance(out, str) else out[0]
    return (True, "") if r.returncode == 0 and out == "ok" else (False, f"the KVM probe failed: {out}")


if __name__ == "__main__":
    try:
        result = _run_guest()
    except OSError as exc:
        print(f"{exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    print(result)
    sys.exit(0 if result == "ok" else 1)
