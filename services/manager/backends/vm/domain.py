"""A workspace's spec becomes a libvirt domain: memory exactly (memtune), vCPUs from the
millicores (cputune quota for fractions), a disk of at least the requested size, the shaped
network interface, a console log per workspace, the guest-agent channel, and a metadata
element that ties the domain to its workspace and manager, so that a restarted manager finds
its own domains.

Pure functions of a DomainPlan: KVM, QEMU without acceleration (TCG) and Xen are the same plan
rendered three ways. Tests check every rendering with `virt-xml-validate`."""
from __future__ import annotations

import dataclasses
import math
import xml.etree.ElementTree as ET

METADATA_URI = "https://vws.invalid/xmlns/workspace/1"
METADATA_PREFIX = "vws"
CPU_PERIOD_US = 100_000
# QEMU's own memory beside the guest's (device emulation, and under TCG the translation
# cache, which is sized below): the hard limit is the guest's memory plus this.
QEMU_OVERHEAD_BYTES = 256 * 1024**2
TCG_TB_CACHE_MIB = 128
DOMAIN_TYPES = ("kvm", "qemu", "xen")


@dataclasses.dataclass
class DomainPlan:
    name: str                      # the libvirt domain name (also the workspace's host identity)
    uuid: str
    workspace: str                 # workspaces/{id}
    manager: str                   # managers/{id}
    domain_type: str               # kvm | qemu | xen
    memory_bytes: int
    cpu_millis: int
    disk_path: str                 # qcow2 overlay (or blank disk for kernel boot)
    disk_bytes: int
    console_log: str
    kernel: str = ""               # direct kernel boot when set
    initrd: str = ""
    kernel_args: str = ""
    network_bits_per_second: int = 0
    tap: str = ""                  # host-side device name of the interface
    bridge: str = ""               # the bridge it joins (the interface is plain ethernet without one)
    mac: str = ""
    guest_agent: bool = True
    agent_socket: str = ""
    # libvirt also raises QEMU's locked-memory limit to a memtune hard limit, which needs
    # CAP_SYS_RESOURCE; without it the manager applies the hard limit to the domain's cgroup
    # after start instead (backends.vm).
    memtune_hard_limit: bool = True

    @property
    def vcpus(self) -> int:
        return max(1, math.ceil(self.cpu_millis / 1000)) if self.cpu_millis else 1

    @property
    def cpu_quota_us(self) -> int:
        """Per-vCPU quota for each CPU_PERIOD_US, or 0 when the millicores are whole cores."""
        if not self.cpu_millis or self.cpu_millis % 1000 == 0:
            return 0
        return max(1000, self.cpu_millis * CPU_PERIOD_US // 1000 // self.vcpus)

    @property
    def hard_limit_bytes(self) -> int:
        return self.memory_bytes + QEMU_OVERHEAD_BYTES + (TCG_TB_CACHE_MIB << 20 if self.domain_type == "qemu" else 0)


def _sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrs) -> ET.Element:
    e = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        e.text = str(text)
    return e


def render(plan: DomainPlan) -> str:
    if plan.domain_type not in DOMAIN_TYPES:
        raise ValueError(f"domain type {plan.domain_type!r}: use one of {', '.join(DOMAIN_TYPES)}")
    xen = plan.domain_type == "xen"
    dom = ET.Element("domain", {"type": plan.domain_type})
    _sub(dom, "name", plan.name)
    _sub(dom, "uuid", plan.uuid)
    _sub(dom, "title", f"vws {plan.workspace}")
    meta = _sub(dom, "metadata")
    ET.SubElement(meta, f"{{{METADATA_URI}}}workspace", {"name": plan.workspace, "manager": plan.manager})
    kib = plan.memory_bytes // 1024
    _sub(dom, "memory", kib, unit="KiB")
    _sub(dom, "currentMemory", kib, unit="KiB")
    if not xen:
        tune = _sub(dom, "memtune")
        if plan.memtune_hard_limit:
            _sub(tune, "hard_limit", plan.hard_limit_bytes // 1024, unit="KiB")
        _sub(tune, "soft_limit", kib, unit="KiB")
    _sub(dom, "vcpu", plan.vcpus, placement="static")
    if plan.cpu_quota_us:
        tune = _sub(dom, "cputune")
        _sub(tune, "period", CPU_PERIOD_US)
        _sub(tune, "quota", plan.cpu_quota_us)
    os_ = _sub(dom, "os")
    if xen and plan.kernel:
        _sub(os_, "type", "xen")  # paravirtualised, direct kernel boot
    else:
        _sub(os_, "type", "hvm", arch="x86_64", machine=None if xen else "pc")
    if plan.kernel:
        _sub(os_, "kernel", plan.kernel)
        if plan.initrd:
            _sub(os_, "initrd", plan.initrd)
        _sub(os_, "cmdline", plan.kernel_args or "console=ttyS0")
    else:
        _sub(os_, "boot", dev="hd")
    features = _sub(dom, "features")
    if not (xen and plan.kernel):
        _sub(features, "acpi")
        _sub(features, "apic")
    if plan.domain_type == "qemu":
        tcg = _sub(features, "tcg")
        _sub(tcg, "tb-cache", TCG_TB_CACHE_MIB, unit="MiB")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    if not xen:
        _sub(dev, "controller", type="usb", model="none")  # no USB: nothing to probe at boot
    disk = _sub(dev, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache=None if xen else "none")
    _sub(disk, "source", file=plan.disk_path)
    _sub(disk, "target", dev="xvda" if xen else "vda", bus="xen" if xen else "virtio")
    nic = _sub(dev, "interface", type="bridge" if plan.bridge else "ethernet")
    if plan.bridge:
        _sub(nic, "source", bridge=plan.bridge)
    if plan.mac:
        _sub(nic, "mac", address=plan.mac)
    if plan.tap:
        _sub(nic, "target", dev=plan.tap)
    _sub(nic, "model", type="netfront" if xen else "virtio")
    if plan.network_bits_per_second and not plan.bridge:
        # libvirt takes kilobytes per second; both directions are shaped. (With a bridge the
        # manager shapes the bridge's link to the host itself: see backends.vm.)
        kbytes = max(1, plan.network_bits_per_second // 8000)
        bw = _sub(nic, "bandwidth")
        _sub(bw, "inbound", average=kbytes, burst=max(64, kbytes // 8))
        _sub(bw, "outbound", average=kbytes, burst=max(64, kbytes // 8))
    if xen:
        console = _sub(dev, "console", type="pty")
        _sub(console, "log", file=plan.console_log, append="on")
        _sub(console, "target", type="xen", port=0)
    else:
        serial = _sub(dev, "serial", type="pty")
        _sub(serial, "log", file=plan.console_log, append="on")
        _sub(serial, "target", port=0)
        console = _sub(dev, "console", type="pty")
        _sub(console, "target", type="serial", port=0)
        if plan.guest_agent:
            ch = _sub(dev, "channel", type="unix")
            if plan.agent_socket:
                _sub(ch, "source", mode="bind", path=plan.agent_socket)
            _sub(ch, "target", type="virtio", name="org.qemu.guest_agent.0")
        _sub(dev, "memballoon", model="none")
    ET.register_namespace(METADATA_PREFIX, METADATA_URI)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def workspace_of(xml: str) -> tuple[str, str] | None:
    """(workspace name, manager name) from a domain's XML, or None when it is not ours."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    el = root.find(f"metadata/{{{METADATA_URI}}}workspace")
    if el is None:
        return None
    return el.get("name", ""), el.get("manager", "")


def relocate(xml: str, *, manager: str, disk: str, console_log: str, kernel: str = "", initrd: str = "",
             bridge: str = "") -> str:
    """A domain's XML (as libvirt gives it) for another manager and its paths: the migration's
    destination defines and restores it with this."""
    ET.register_namespace(METADATA_PREFIX, METADATA_URI)
    root = ET.fromstring(xml)
    owner = root.find(f"metadata/{{{METADATA_URI}}}workspace")
    if owner is not None:
        owner.set("manager", manager)
    for tag, path in (("kernel", kernel), ("initrd", initrd)):
        el = root.find(f"os/{tag}")
        if el is not None and path:
            el.text = path
    for source in root.findall("devices/disk/source"):
        source.set("file", disk)
    for log in root.findall("devices/*/log"):
        log.set("file", console_log)
    for source in root.findall("devices/interface/source"):
        if bridge and source.get("bridge") is not None:
            source.set("bridge", bridge)
    return ET.tostring(root, encoding="unicode")
