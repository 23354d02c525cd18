"""VIRTUAL_MACHINE workspaces through libvirt: KVM where it really runs guests, QEMU without
acceleration (TCG) otherwise, Xen on Xen hosts (the connection URI and the domain type are
settings; `auto` probes KVM at start).

A workspace is one persistent domain named `vws-<workspace id>`, tied to its workspace and this
manager by a metadata element (vws.manager.backends.vm.domain), so that a restarted manager finds
its own domains. Its disk is a qcow2 overlay on the image in the manager's cache (or a blank
disk of the requested size when the image boots a kernel), its console is logged to a file, and
its files live in <state_dir>/vm/workspaces/<id>/:

    overlay.qcow2   the guest's disk (copy-on-write on the cached image)
    console.log     everything the guest wrote to its serial console
    plan.json       what the domain was made from (image, boot, agent)
    memory.save     the serialised memory state while SUSPENDED
    suspend.json    the digests of memory.save and overlay.qcow2 recorded at suspend, checked
                    before the guest is restored

Programs run through the QEMU guest agent (guest-exec) in a helper process
(vws.manager.backends.vm.guest_exec), so the manager's Exec stream treats them like any program."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from ....common import errors, model, units
from . import domain as dom_xml
from ..host import netshape
from ..base import (Backend, BackendSettings, Counters, ExecOptions, HostHandle, Package,
                                       ProgressFn, host_capacity)
from .images import ImageCache
from vws.native import copysum

log = logging.getLogger("vws.manager.vm")

try:
    import libvirt
    import libvirt_qemu
except ImportError:  # pragma: no cover - libvirt-python is a dependency; this is for a broken install
    libvirt = libvirt_qemu = None


# Overlays hold only what a guest writes: small clusters keep a fresh overlay (its header,
# tables and the few blocks a boot touches) near 100 KiB instead of ~450 KiB with qcow2's
# default 64 KiB clusters, so that ten workspaces on one image take barely more than the image.
OVERLAY_OPTIONS = "cluster_size=16k"


@dataclasses.dataclass
class VmSettings:
    uri: str = "qemu:///system"
    domain_type: str = "auto"        # kvm | qemu | xen | auto
    orphans: str = "destroy"         # destroy | report
    shutdown_timeout: float = 20.0
    agent_timeout: float = 60.0


def choose_domain_type(uri: str, wanted: str) -> tuple[str, str]:
    """(domain type, why) for this host."""
    if wanted != "auto":
        return wanted, "configured"
    if uri.startswith("xen"):
        return "xen", "a Xen connection"
    from .kvmprobe import kvm_works
    ok, why = kvm_works()
    return ("kvm", "KVM runs guests here") if ok else ("qemu", f"no acceleration: {why}")


def can_raise_rlimits() -> bool:
    """Whether this process has CAP_SYS_RESOURCE (libvirtd, started the same way, has the same)."""
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return True
    return bool(eff & (1 << 24))


def qemu_memory_cgroup(domain_name: str) -> Path | None:
    """The memory cgroup directory of a running domain's QEMU process (v1 or v2)."""
    try:
        pid = int(Path(f"/run/libvirt/qemu/{domain_name}.pid").read_text().strip())
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except (OSError, ValueError):
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    return None


def _vir_error(exc: Exception) -> str:
    return exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)


class LibvirtBackend(Backend):
    name = "libvirt"
    kinds = frozenset({model.Kind.VIRTUAL_MACHINE})
    host_noun = "domain"

    def __init__(self, settings: BackendSettings, vm: VmSettings, resolve_image):
        """resolve_image(name) -> model.Image: the repository's catalogue entry."""
        if libvirt is None:
            raise errors.Unimplemented("libvirt-python is not installed")
        self.settings, self.vm = settings, vm
        self.resolve_image = resolve_image
        self.manager = f"managers/{settings.manager_id}"
        self.root = Path(settings.state_dir) / "vm"
        self.images = ImageCache(self.root / "cache")
        (self.root / "workspaces").mkdir(parents=True, exist_ok=True)
        self._conn = None
        self._conn_lock = threading.Lock()
        self._booted: dict[str, float] = {}  # domain name -> monotonic time it was last started
        self.connection()  # fails here, at start, when libvirtd does not answer
        self.memtune_hard_limit = can_raise_rlimits()
        self.domain_type, why = choose_domain_type(vm.uri, vm.domain_type)
        log.info("virtual machines: %s, domain type %s (%s)", vm.uri, self.domain_type, why)

    # ----------------------------------------------------------------- plumbing
    def connection(self):
        with self._conn_lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
            try:
                self._conn = libvirt.open(self.vm.uri)
            except libvirt.libvirtError as exc:
                raise errors.Unavailable(f"libvirt at {self.vm.uri} does not answer: {_vir_error(exc)}; "
                                         "is libvirtd running? (scripts/setup-libvirt.sh starts it)") from None
            return self._conn

    def _domain(self, handle: HostHandle):
        try:
            return self.connection().lookupByName(handle.host_identity)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise errors.FailedPrecondition(
                    f"domain {handle.host_identity} of workspaces/{handle.workspace_id} is gone from the host") from None
            raise

    def _dir(self, workspace_id: str) -> Path:
        return self.root / "workspaces" / workspace_id

    @staticmethod
    def domain_name(workspace_id: str) -> str:
        return f"vws-{workspace_id}"

    def _plan_file(self, workspace_id: str) -> dict:
        try:
            return json.loads((self._dir(workspace_id) / "plan.json").read_text())
        except (OSError, ValueError):
            return {}

    # ----------------------------------------------------------------- capacity
    def capacity(self) -> model.Capacity:
        return host_capacity(self.settings, self.settings.max_workspaces)

    # ----------------------------------------------------------------- realise
    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress: ProgressFn | None = None) -> HostHandle:
        name = self.domain_name(workspace_id)
        handle = HostHandle(workspace_id, name, model.Kind.VIRTUAL_MACHINE)
        if self.exists(handle):
            return handle
        image = self.resolve_image(spec.software.image)
        wdir = self._dir(workspace_id)
        try:
            cached = self._propagate(image, progress)
            wdir.mkdir(parents=True, exist_ok=True)
            # The reservation names plan.json as its owner: it must exist before, or another
            # workspace's reserve could take the slot over as abandoned.
            (wdir / "plan.json").write_text("{}")
            link = netshape.reserve(int(hashlib.sha256(workspace_id.encode()).hexdigest(), 16) % netshape.SLOTS,
                                    wdir / "plan.json")
            plan = self._plan(workspace_id, spec, image, cached, wdir, link)
            (wdir / "plan.json").write_text(json.dumps({
                "link": link.index, "guest_addr": link.inner_addr, "host_addr": link.host_addr,
                "image": image.name, "boot": image.boot.value, "guest_agent": image.guest_agent,
                "domain_type": plan.domain_type, "memory_bytes": plan.memory_bytes, "cpu_millis": plan.cpu_millis,
                "disk_bytes": plan.disk_bytes, "network_bits_per_second": plan.network_bits_per_second,
                "tap": plan.tap, "cpu_quota_us": plan.cpu_quota_us, "hard_limit_bytes": plan.hard_limit_bytes,
                "memtune_hard_limit": plan.memtune_hard_limit}))
            try:
                self.connection().defineXML(dom_xml.render(plan))
            except libvirt.libvirtError as exc:
                raise errors.FailedPrecondition(f"libvirt refused the domain for workspaces/{workspace_id}: "
                                                f"{_vir_error(exc)}") from None
        except BaseException:
            self._unlink(workspace_id)
            shutil.rmtree(wdir, ignore_errors=True)
            raise
        return handle

    # ----------------------------------------------------------------- network
    # Each guest's interface (a tap libvirt makes) sits on a bridge of its own, joined to the
    # host by a veth pair with a private /30 (netshape's address reservations, shared with
    # sandboxes). Both directions are shaped by token buckets on the pair's two egresses: libvirt's
    # own <bandwidth> needs the sfq and police modules, which hosts like ours lack, and tc can
    # only police a tap's ingress with them. The bridge itself must not be a way into the host,
    # or the guest's traffic would skip the pair and its bucket (see _seal_bridge).
    def _link(self, workspace_id: str) -> netshape.Link | None:
        index = self._plan_file(workspace_id).get("link")
        return None if index is None else netshape.Link(int(index))

    def _ensure_link(self, workspace_id: str) -> None:
        plan = self._plan_file(workspace_id)
        link = self._link(workspace_id)
        if link is None:
            return
        bridge, host, peer = link_names(link)
        if (Path("/sys/class/net") / bridge).exists() and (Path("/sys/class/net") / host).exists():
            self._seal_bridge(workspace_id, bridge)
            return
        batch = "".join(f"link del {d}\n" for d in (bridge, host) if (Path("/sys/class/net") / d).exists())
        batch += (f"link add {bridge} type bridge\nlink set {bridge} up\n"
                  f"link add {host} type veth peer name {peer}\nlink set {peer} master {bridge}\n"
                  f"link set {peer} up\naddr add {link.host_addr}/30 dev {host}\nlink set {host} up\n")
        r = subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True, text=True)
        if r.returncode:
            raise errors.BackendError(f"the network of workspaces/{workspace_id} could not be made: {r.stderr.strip()}")
        self._seal_bridge(workspace_id, bridge)
        rate = plan.get("network_bits_per_second", 0)
        for dev in (peer, host) if rate else ():
            r = subprocess.run(["tc", *netshape.tbf(dev, rate)], capture_output=True, text=True)
            if r.returncode:
                raise errors.BackendError(f"shaping {dev} of workspaces/{workspace_id} failed: {r.stderr.strip()}")

    @staticmethod
    def _seal_bridge(workspace_id: str, bridge: str) -> None:
        """Makes the host unreachable through the bridge's own interface, leaving the pair as the
        guest's only way in. A bridge takes the address of its first port, the pair's bridge end,
        and answered the guest's ARP with it: frames to that address are delivered to the host by
        the bridge without leaving through the pair, so the guest's outbound traffic was not
        shaped at all. With ARP off on the bridge, the host answers only from the pair's host end;
        a guest that forges the bridge's address into its ARP table is stopped by the strict
        reverse-path filter (its address routes through the pair, not the bridge); and the bridge
        has no IPv6. Idempotent: also run on a bridge made before this existed."""
        r = subprocess.run(["ip", "link", "set", "dev", bridge, "arp", "off"], capture_output=True, text=True)
        try:
            if r.returncode:
                raise OSError(r.stderr.strip())
            (Path("/proc/sys/net/ipv4/conf") / bridge / "rp_filter").write_text("1\n")
            ipv6 = Path("/proc/sys/net/ipv6/conf") / bridge / "disable_ipv6"
            if ipv6.exists():
                ipv6.write_text("1\n")
        except OSError as exc:
            raise errors.BackendError(f"the bridge {bridge} of workspaces/{workspace_id} could not be closed to the "
                                      f"host, so its bandwidth could not be enforced: {exc}") from None
        if Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip() == "2":
            log.warning("net.ipv4.conf.all.rp_filter is 2 (loose), which overrides the strict filter on %s: a guest "
                        "that forges its ARP table can reach the host past its bandwidth limit; set it to 0 or 1",
                        bridge)

    def _unlink(self, workspace_id: str) -> None:
        link = self._link(workspace_id)
        if link is None:
            return
        for dev in link_names(link)[:2]:
            if (Path("/sys/class/net") / dev).exists():
                subprocess.run(["ip", "link", "del", dev], capture_output=True)
        netshape.release(link, self._dir(workspace_id) / "plan.json")

    def _propagate(self, image: model.Image, progress: ProgressFn | None) -> dict[model.FileRole, Path]:
        total = sum(f.size_bytes for f in image.files)
        activity = f"propagating image {image.image_id} ({units.format_size(total)})"
        done_before = 0
        cached: dict[model.FileRole, Path] = {}
        for f in image.files:
            if progress is not None and not self.images.path(f.digest).exists():
                base = done_before
                progress(activity, base, total)
                cb = (lambda done, _total, base=base: progress(activity, base + done, total))
            else:
                cb = None
            cached[f.role] = self.images.ensure(image, f, cb)
            done_before += f.size_bytes
        return cached

    def _plan(self, workspace_id: str, spec: model.WorkspaceSpec, image: model.Image,
              cached: dict[model.FileRole, Path], wdir: Path, link: netshape.Link) -> dom_xml.DomainPlan:
        res = spec.resources
        overlay = wdir / "overlay.qcow2"
        disk_bytes = res.disk_bytes or units.parse_size("1G")
        base = cached.get(model.FileRole.DISK)
        if base is not None:
            fmt = image.file(model.FileRole.DISK).format.value.lower()
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(base)],
                                             check=True, capture_output=True, text=True).stdout)
            disk_bytes = max(disk_bytes, int(info["virtual-size"]))
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", OVERLAY_OPTIONS, "-F", fmt, "-b", str(base),
                   str(overlay), str(disk_bytes)]
        else:
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", OVERLAY_OPTIONS, str(overlay), str(disk_bytes)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise errors.BackendError(f"qemu-img could not make the disk of workspaces/{workspace_id}: {r.stderr.strip()}")
        mac_bytes = hashlib.sha256(workspace_id.encode()).digest()[:3]
        kernel, initrd = cached.get(model.FileRole.KERNEL), cached.get(model.FileRole.INITRD)
        return dom_xml.DomainPlan(
            name=self.domain_name(workspace_id), uuid=str(uuid.uuid4()), workspace=f"workspaces/{workspace_id}",
            manager=self.manager, domain_type=self.domain_type, memory_bytes=res.memory_bytes or 256 * 1024**2,
            cpu_millis=res.cpu_millis, disk_path=str(overlay), disk_bytes=disk_bytes,
            console_log=str(wdir / "console.log"), kernel=str(kernel) if kernel else "",
            initrd=str(initrd) if initrd else "",
            kernel_args=f"{image.kernel_args or 'console=ttyS0'} vws.ip={link.inner_addr}/30 vws.gw={link.host_addr}",
            network_bits_per_second=res.network_bits_per_second, tap=f"vt{workspace_id}"[:15],
            bridge=link_names(link)[0],
            mac="52:54:00:" + ":".join(f"{b:02x}" for b in mac_bytes), guest_agent=image.guest_agent,
            memtune_hard_limit=self.memtune_hard_limit)

    # ----------------------------------------------------------------- lifecycle
    def start(self, handle: HostHandle) -> str | None:
        d = self._domain(handle)
        self._ensure_link(handle.workspace_id)
        if not d.isActive():
            try:
                d.create()
            except libvirt.libvirtError as exc:
                raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} did not start: "
                                          f"{_vir_error(exc)}") from None
        self._booted[handle.host_identity] = time.monotonic()
        self._limit_memory(handle)
        return f"guest started ({self.domain_type})"

    def _limit_memory(self, handle: HostHandle) -> None:
        """Where libvirt could not set the memtune hard limit, the same limit on QEMU's cgroup."""
        plan = self._plan_file(handle.workspace_id)
        if plan.get("memtune_hard_limit", True) or not plan.get("hard_limit_bytes"):
            return
        group = qemu_memory_cgroup(handle.host_identity)
        for name in ("memory.limit_in_bytes", "memory.max"):
            if group is not None and (group / name).exists():
                (group / name).write_text(str(plan["hard_limit_bytes"]))
                return
        log.warning("no memory cgroup found for %s: QEMU's memory is not capped", handle.host_identity)

    def _wait_off(self, d, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not d.isActive():
                return True
            time.sleep(0.1)
        return not d.isActive()

    def stop(self, handle: HostHandle, force: bool = False) -> str | None:
        wdir = self._dir(handle.workspace_id)
        d = self._domain(handle)
        self._booted.pop(handle.host_identity, None)
        if not d.isActive():
            # SUSPENDED: the serialised state is discarded; the disk stays as it was saved.
            for f in ("memory.save", "suspend.json"):
                (wdir / f).unlink(missing_ok=True)
            return "stopped: the serialised state was discarded"
        if not force and d.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
            t0 = time.monotonic()
            try:
                d.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except libvirt.libvirtError as exc:
                log.warning("ACPI shutdown of %s refused: %s", handle.host_identity, _vir_error(exc))
            if self._wait_off(d, self.vm.shutdown_timeout):
                return f"stopped: the guest powered off on ACPI in {time.monotonic() - t0:.1f}s"
            self._power_off(d)
            return f"stopped: forced off after {self.vm.shutdown_timeout:g}s without powering off on ACPI"
        self._power_off(d)
        return "stopped: powered off" + (" (it was paused)" if not force else "")

    def _power_off(self, d) -> None:
        try:
            d.destroy()
        except libvirt.libvirtError as exc:
            if d.isActive():
                raise errors.BackendError(f"could not power off {d.name()}: {_vir_error(exc)}") from None

    def pause(self, handle: HostHandle) -> str | None:
        self._domain(handle).suspend()
        return "paused: the guest's vCPUs are stopped, its memory kept"

    def resume(self, handle: HostHandle) -> str | None:
        wdir = self._dir(handle.workspace_id)
        saved = wdir / "memory.save"
        if not saved.exists():
            self._domain(handle).resume()
            return "resumed"
        try:
            recorded = json.loads((wdir / "suspend.json").read_text())
        except (OSError, ValueError):
            raise errors.FailedPrecondition(
                f"workspaces/{handle.workspace_id} has a saved state but no record of its digests; it was not "
                "restored: stop it to discard the saved state") from None
        for f, key in (("memory.save", "memory_digest"), ("overlay.qcow2", "overlay_digest")):
            actual = copysum.digest_file(str(wdir / f)).digest
            if actual != recorded.get(key):
                raise errors.FailedPrecondition(
                    f"the saved {f} of workspaces/{handle.workspace_id} does not match the digest recorded at "
                    f"suspend (recorded {recorded.get(key)}, now {actual}); it was not restored: stop it to "
                    "discard the saved state and boot afresh")
        t0 = time.monotonic()
        self._ensure_link(handle.workspace_id)
        try:
            self.connection().restore(str(saved))
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} could not be restored: "
                                      f"{_vir_error(exc)}") from None
        saved.unlink(missing_ok=True)
        (wdir / "suspend.json").unlink(missing_ok=True)
        self._booted.setdefault(handle.host_identity, 0.0)
        self._limit_memory(handle)
        return f"resumed: restored from its serialised state (digests checked) in {time.monotonic() - t0:.1f}s"

    def suspend(self, handle: HostHandle) -> str | None:
        wdir = self._dir(handle.workspace_id)
        saved = wdir / "memory.save"
        t0 = time.monotonic()
        self._save(handle, self._domain(handle), "")
        memory = copysum.digest_file(str(saved))
        overlay = copysum.digest_file(str(wdir / "overlay.qcow2"))
        (wdir / "suspend.json").write_text(json.dumps({
            "memory_digest": memory.digest, "memory_bytes": memory.size,
            "overlay_digest": overlay.digest, "overlay_bytes": overlay.size, "time": time.time()}))
        return (f"suspended in {time.monotonic() - t0:.1f}s: memory state {units.format_size(memory.size)} "
                f"({memory.digest}), disk overlay {units.format_size(overlay.size)} ({overlay.digest})")

    def _save(self, handle: HostHandle, d, why: str) -> None:
        """The guest's memory into its memory.save (the domain stops); nothing left on failure."""
        saved = self._dir(handle.workspace_id) / "memory.save"
        try:
            d.save(str(saved))
        except libvirt.libvirtError as exc:
            saved.unlink(missing_ok=True)
            raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} could not be saved{why}: "
                                      f"{_vir_error(exc)}") from None
        self._booted.pop(handle.host_identity, None)

    # ----------------------------------------------------------------- migration
    # A guest moves as its saved memory (virDomainSave), its overlay and the files of its
    # image (the destination's cache usually has those: the transfer then sends nothing of
    # them). The domain is undefined here while it travels, so that a destination on the same
    # host can define the same name; its XML rides in the package and comes back on a revert.
    def pack(self, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir: Path) -> Package:
        wdir = self._dir(handle.workspace_id)
        saved = wdir / "memory.save"
        d = self._domain(handle)
        xml = d.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
        if state in (model.State.RUNNING, model.State.PAUSED):
            self._save(handle, d, " for migration")
        plan = self._plan_file(handle.workspace_id)
        meta = {"xml": xml, "plan": plan, "suspend": {}}
        files = {"overlay": wdir / "overlay.qcow2"}
        if saved.exists():
            files["memory"] = saved
        if state is model.State.SUSPENDED:
            meta["suspend"] = json.loads((wdir / "suspend.json").read_text())
        image = self.resolve_image(plan.get("image") or spec.software.image)
        meta["image"] = {f.role.value: {"digest": f.digest, "format": f.format.value} for f in image.files}
        for f in image.files:
            files[f"image-{f.role.value.lower()}"] = self.images.path(f.digest)
        try:
            d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            self.revert_pack(handle, Package(files, meta), state)
            raise errors.BackendError(f"domain {handle.host_identity} could not be handed over: "
                                      f"{_vir_error(exc)}") from None
        self._unlink(handle.workspace_id)  # its addresses go with it
        (wdir / "plan.json").write_text(json.dumps({k: v for k, v in plan.items() if k != "link"}))
        return Package(files, meta)

    def revert_pack(self, handle: HostHandle, package: Package, state: model.State) -> None:
        meta = package.meta
        wdir = self._dir(handle.workspace_id)
        if not self.exists(handle) and meta.get("xml"):
            self.connection().defineXML(meta["xml"])
        if meta.get("plan") and "link" not in self._plan_file(handle.workspace_id):
            self._take_link(handle.workspace_id, dict(meta["plan"]))
        # Saved for this migration (or before a restart cut the packing short): it ran, so it runs again.
        if state in (model.State.RUNNING, model.State.PAUSED) and (wdir / "memory.save").exists():
            self._restore_saved(handle, state, None, "after the failed migration")

    def _take_link(self, workspace_id: str, plan: dict) -> netshape.Link:
        """The link plan names (its addresses are in the guest's memory), or the next free one;
        plan.json records which."""
        path = self._dir(workspace_id) / "plan.json"
        path.write_text(json.dumps(plan))
        link = netshape.reserve(int(plan.get("link", 0)), path)
        if link.index != plan.get("link"):
            log.warning("workspaces/%s is on link %d, not %s: the guest keeps its old address until it reboots",
                        workspace_id, link.index, plan.get("link"))
        plan.update(link=link.index, guest_addr=link.inner_addr, host_addr=link.host_addr)
        path.write_text(json.dumps(plan))
        return link

    def _restore_saved(self, handle: HostHandle, state: model.State, xml: str | None, when: str) -> None:
        """Restores the guest from its memory.save, running or paused as state says."""
        self._ensure_link(handle.workspace_id)
        saved = self._dir(handle.workspace_id) / "memory.save"
        flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if state is model.State.PAUSED else libvirt.VIR_DOMAIN_SAVE_RUNNING
        try:
            self.connection().restoreFlags(str(saved), xml, flags)
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} could not be restored {when}: "
                                      f"{_vir_error(exc)}") from None
        saved.unlink(missing_ok=True)
        self._booted.setdefault(handle.host_identity, 0.0)
        self._limit_memory(handle)

    def unpack(self, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State
               ) -> HostHandle:
        meta, files = package.meta, package.files
        handle = HostHandle(workspace_id, self.domain_name(workspace_id), model.Kind.VIRTUAL_MACHINE)
        if self.exists(handle):
            raise errors.FailedPrecondition(f"domain {handle.host_identity} already exists on this host")
        wdir = self._dir(workspace_id)
        wdir.mkdir(parents=True, exist_ok=True)
        try:
            cached: dict[str, Path] = {}
            for role, info in meta["image"].items():
                path = self.images.path(info["digest"])
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(files[f"image-{role.lower()}"]), path)
                cached[role] = path
            overlay = wdir / "overlay.qcow2"
            shutil.move(str(files["overlay"]), overlay)
            disk = meta["image"].get(model.FileRole.DISK.value)
            if disk is not None:  # the overlay's backing file is the image in this cache now
                r = subprocess.run(["qemu-img", "rebase", "-u", "-F", disk["format"].lower(), "-b",
                                    str(cached[model.FileRole.DISK.value]), str(overlay)], capture_output=True, text=True)
                if r.returncode:
                    raise errors.BackendError(f"the overlay of workspaces/{workspace_id} could not be rebased: "
                                              f"{r.stderr.strip()}")
            link = self._take_link(workspace_id, dict(meta["plan"]))
            xml = dom_xml.relocate(meta["xml"], manager=self.manager, disk=str(overlay),
                                   console_log=str(wdir / "console.log"),
                                   kernel=str(cached.get(model.FileRole.KERNEL.value, "")),
                                   initrd=str(cached.get(model.FileRole.INITRD.value, "")),
                                   bridge=link_names(link)[0])
            try:
                self.connection().defineXML(xml)
            except libvirt.libvirtError as exc:
                raise errors.BackendError(f"libvirt refused the arriving domain of workspaces/{workspace_id}: "
                                          f"{_vir_error(exc)}") from None
            saved = wdir / "memory.save"
            if "memory" in files:
                shutil.move(str(files["memory"]), saved)
            if state is model.State.SUSPENDED:
                (wdir / "suspend.json").write_text(json.dumps(meta["suspend"]))
            elif state in (model.State.RUNNING, model.State.PAUSED):
                self._restore_saved(handle, state, xml, "here")
        except BaseException:
            self.destroy(handle)
            raise
        return handle

    def reboot(self, handle: HostHandle) -> str | None:
        d = self._domain(handle)
        try:
            d.reset(0)
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"could not reboot {handle.host_identity}: {_vir_error(exc)}") from None
        self._booted[handle.host_identity] = time.monotonic()
        return "rebooted (reset)"

    def _owner(self, d) -> str:
        """The manager a domain's metadata names, or "" when it has none of ours."""
        try:
            xml = d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.METADATA_URI)
        except libvirt.libvirtError:
            return ""
        owner = dom_xml.workspace_of(f'<domain><metadata>{_with_ns(xml)}</metadata></domain>')
        return owner[1] if owner else ""

    def destroy(self, handle: HostHandle) -> None:
        try:
            d = self.connection().lookupByName(handle.host_identity)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            d = None
        if d is not None and self._owner(d) not in (self.manager, ""):
            d = None  # the same name, another manager's: a guest that migrated to it on this host
        if d is not None:
            if d.isActive():
                self._power_off(d)
            flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                     | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            try:
                d.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        self._booted.pop(handle.host_identity, None)
        self._unlink(handle.workspace_id)
        shutil.rmtree(self._dir(handle.workspace_id), ignore_errors=True)  # the image cache is kept

    # ----------------------------------------------------------------- programs
    def _agent(self, d, command: dict, timeout: int = 5) -> dict:
        return json.loads(libvirt_qemu.qemuAgentCommand(d, json.dumps(command), timeout, 0))

    def wait_for_agent(self, handle: HostHandle, timeout: float | None = None) -> float:
        """Seconds until the guest agent answered; FailedPrecondition when it does not."""
        if not self._plan_file(handle.workspace_id).get("guest_agent", True):
            raise errors.FailedPrecondition(
                f"workspaces/{handle.workspace_id} boots an image without the QEMU guest agent, so programs cannot "
                "be started in it from outside; use an image with qemu-guest-agent")
        d = self._domain(handle)
        booted = self._booted.get(handle.host_identity, 0.0)
        if timeout is None:  # a guest still booting gets until agent_timeout after its start
            timeout = max(2.0, booted + self.vm.agent_timeout - time.monotonic())
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = ""
        while True:
            try:
                self._agent(d, {"execute": "guest-ping"}, 1)
                return time.monotonic() - t0
            except libvirt.libvirtError as exc:
                last = _vir_error(exc)
                if "not configured" in last:
                    raise errors.FailedPrecondition(
                        f"workspaces/{handle.workspace_id} has no guest agent channel; programs cannot be started "
                        "in it") from None
            if time.monotonic() >= deadline:
                raise errors.FailedPrecondition(
                    f"the guest agent of workspaces/{handle.workspace_id} did not answer within {timeout:.0f}s "
                    f"({last}); the guest has no agent running or has not finished booting")
            time.sleep(0.1)

    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        self.wait_for_agent(handle)
        request = {"uri": self.vm.uri, "domain": handle.host_identity, "argv": options.argv,
                   "environment": options.environment, "working_directory": options.working_directory}
        proc = subprocess.Popen([sys.executable, "-m", "vws.manager.backends.vm.guest_exec", json.dumps(request)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        return proc

    # ----------------------------------------------------------------- host view
    def exists(self, handle: HostHandle) -> bool:
        try:
            self.connection().lookupByName(handle.host_identity)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    def inventory(self) -> dict[str, str]:
        found = {}
        for d in self.connection().listAllDomains(0):
            try:
                xml = d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.METADATA_URI)
            except libvirt.libvirtError:
                continue  # not ours: no vws metadata
            owner = dom_xml.workspace_of(f'<domain><metadata>{_with_ns(xml)}</metadata></domain>')
            if owner and owner[1] == self.manager and owner[0].startswith("workspaces/"):
                found[d.name()] = owner[0].split("/", 1)[1]
        return found

    def reclaim(self, host_identity: str) -> None:
        wid = self.inventory().get(host_identity)
        if self.vm.orphans == "report":
            log.warning("domain %s (workspaces/%s) is owned by no workspace of this manager; left alone "
                        "(vm_orphans = report)", host_identity, wid)
            return
        log.warning("destroying domain %s: no workspace of this manager owns it", host_identity)
        self.destroy(HostHandle(wid or host_identity.removeprefix("vws-"), host_identity, model.Kind.VIRTUAL_MACHINE))

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        """A restarted manager leaves running guests running. After a host restart a guest that
        should run is off: it is booted again."""
        if not running:
            return []
        d = self._domain(handle)
        if d.isActive():
            return []
        self.start(handle)
        return ["guest booted again (it was off)"]

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        plan = self._plan_file(handle.workspace_id)
        if not plan:
            return None
        quota = plan.get("cpu_quota_us", 0)
        return model.Enforcement(
            mechanism=f"libvirt {plan.get('domain_type', self.domain_type)}",
            memory_limit_bytes=plan.get("memory_bytes", 0), cpu_quota_micros=quota,
            cpu_period_micros=dom_xml.CPU_PERIOD_US if quota else 0, disk_bytes=plan.get("disk_bytes", 0),
            disk_mount=str(self._dir(handle.workspace_id) / "overlay.qcow2"),
            network_bits_per_second=plan.get("network_bits_per_second", 0))

    def sample(self, handle: HostHandle) -> Counters | None:
        try:
            d = self.connection().lookupByName(handle.host_identity)
            if not d.isActive():
                return None
            info = d.info()
            c = Counters(time=time.time(), cpu_ns=int(info[4]), memory_limit=int(info[1]) * 1024)
            stats = d.memoryStats()
            c.memory_current = int(stats.get("rss", info[2])) * 1024
            link = self._link(handle.workspace_id)
            if link is not None:
                stats = Path("/sys/class/net") / link_names(link)[1] / "statistics"
                try:  # the host side sends what the guest receives
                    c.net_rx = int((stats / "tx_bytes").read_text())
                    c.net_tx = int((stats / "rx_bytes").read_text())
                except (OSError, ValueError):
                    pass
            try:
                c.disk_used = int(d.blockInfo("vda")[1])
            except libvirt.libvirtError:
                pass
            return c
        except libvirt.libvirtError:
            return None

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None


def link_names(link: netshape.Link) -> tuple[str, str, str]:
    """(bridge, host side of the pair, bridge side of the pair) for a reserved link."""
    return f"vwsb{link.index}", f"vwsn{link.index}", f"vwsp{link.index}"


def _with_ns(xml: str) -> str:
    """libvirt returns the metadata element with its namespace declared on it; make sure."""
    if "xmlns" in xml:
        return xml
    return xml.replace("<workspace", f'<workspace xmlns="{dom_xml.METADATA_URI}"', 1)
