"""VIRTUAL_MACHINE workspaces through libvirt: KVM where it really runs guests, QEMU without
acceleration (TCG) otherwise, Xen on Xen hosts (the connection URI and the domain type are
settings; `auto` probes KVM at start).

A workspace is one persistent domain named `vws-<workspace id>`, tied to its workspace and this
manager by a metadata element (vws.manager.backends.vm.domain), so that a restarted manager finds
its own domains. Its disk is a qcow2 overlay on the image in the manager's cache (or a blank
disk of the requested size when the image boots a kernel), its console is logged to a file, and
its files live in <state_dir>/vm/workspaces/<id>/ (files.py).

    connection.py    libvirt, its settings and the connection
    provisioning.py  the image into the cache, the disk, the domain's plan (domain.py renders it)
    network.py       each guest's bridge and shaped link
    agent.py         programs through the guest agent (guest_exec.py runs each)
    packing.py       a workspace packed for migration and unpacked"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

from ....common import errors, model, units
from ..base import Backend, BackendSettings, Counters, ExecOptions, HostHandle, Package, ProgressFn, host_capacity
from . import domain as dom_xml
from . import packing, provisioning
from .agent import GuestAgent, check_environment
from .connection import Connection, VmSettings, can_raise_rlimits, choose_domain_type, domain_owner, libvirt, vir_error
from .files import WorkspaceFiles
from .images import ImageCache
from .network import GuestNetwork
from vws.native import copysum

log = logging.getLogger("vws.manager.vm")


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


class LibvirtBackend(Backend):
    name = "libvirt"
    kind = model.Kind.VIRTUAL_MACHINE  # the one kind it realises, on its handles
    kinds = frozenset({kind})
    host_noun = "domain"

    def __init__(self, settings: BackendSettings, vm: VmSettings, resolve_image):
        """resolve_image(name) -> model.Image: the repository's catalogue entry."""
        self.connection = Connection(vm.uri)  # Unimplemented, before anything, without libvirt-python
        self.settings, self.vm = settings, vm
        self.resolve_image = resolve_image
        self.manager = f"managers/{settings.manager_id}"
        self.root = Path(settings.state_dir) / "vm"
        self.images = ImageCache(self.root / "cache")
        self.files = WorkspaceFiles(self.root / "workspaces")
        self.network = GuestNetwork(self.files)
        self.agent = GuestAgent(vm.uri, vm.agent_timeout)
        self._booted: dict[str, float] = {}  # domain name -> monotonic time it was last started
        self.connection.get()  # fails here, at start, when libvirtd does not answer
        self.memtune_hard_limit = can_raise_rlimits()
        self.domain_type, why = choose_domain_type(vm.uri, vm.domain_type)
        log.info("virtual machines: %s, domain type %s (%s)", vm.uri, self.domain_type, why)

    @staticmethod
    def domain_name(workspace_id: str) -> str:
        return f"vws-{workspace_id}"

    # ----------------------------------------------------------------- capacity
    def capacity(self) -> model.Capacity:
        return host_capacity(self.settings, self.settings.max_workspaces)

    # ----------------------------------------------------------------- realise
    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress: ProgressFn | None = None) -> HostHandle:
        name = self.domain_name(workspace_id)
        handle = HostHandle(workspace_id, name, self.kind)
        if self.exists(handle):
            return handle
        check_environment(spec.software.environment)  # or the workspace could run nothing
        image = self.resolve_image(spec.software.image)
        wdir = self.files.dir(workspace_id)
        try:
            cached = provisioning.propagate(self.images, image, progress)
            wdir.mkdir(parents=True, exist_ok=True)
            # The reservation names plan.json as its owner: it must exist before, or another
            # workspace's reserve could take the slot over as abandoned.
            self.files.write_plan(workspace_id, {})
            link = self.network.reserve(workspace_id)
            plan = provisioning.domain_plan(workspace_id, spec, image, cached, wdir, link, name=name,
                                            manager=self.manager, domain_type=self.domain_type,
                                            memtune_hard_limit=self.memtune_hard_limit)
            self.files.write_plan(workspace_id, {
                "link": link.index, "guest_addr": link.inner_addr, "host_addr": link.host_addr,
                "image": image.name, "boot": image.boot.value, "guest_agent": image.guest_agent,
                "domain_type": plan.domain_type, "memory_bytes": plan.memory_bytes, "cpu_millis": plan.cpu_millis,
                "disk_bytes": plan.disk_bytes, "network_bits_per_second": plan.network_bits_per_second,
                "tap": plan.tap, "cpu_quota_us": plan.cpu_quota_us, "hard_limit_bytes": plan.hard_limit_bytes,
                "memtune_hard_limit": plan.memtune_hard_limit})
            try:
                self.connection.get().defineXML(dom_xml.render(plan))
            except libvirt.libvirtError as exc:
                raise errors.FailedPrecondition(f"libvirt refused the domain for workspaces/{workspace_id}: "
                                                f"{vir_error(exc)}") from None
        except BaseException:
            self.network.release(workspace_id)
            shutil.rmtree(wdir, ignore_errors=True)
            raise
        return handle

    # ----------------------------------------------------------------- lifecycle
    def start(self, handle: HostHandle) -> str | None:
        d = self.connection.domain(handle)
        self.network.ensure(handle.workspace_id)
        if not d.isActive():
            try:
                d.create()
            except libvirt.libvirtError as exc:
                raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} did not start: "
                                          f"{vir_error(exc)}") from None
        self._booted[handle.host_identity] = time.monotonic()
        self._limit_memory(handle)
        return f"guest started ({self.domain_type})"

    def _limit_memory(self, handle: HostHandle) -> None:
        """Where libvirt could not set the memtune hard limit, the same limit on QEMU's cgroup."""
        plan = self.files.plan(handle.workspace_id)
        if plan.get("memtune_hard_limit", True) or not plan.get("hard_limit_bytes"):
            return
        group = qemu_memory_cgroup(handle.host_identity)
        for name in ("memory.limit_in_bytes", "memory.max"):
            if group is not None and (group / name).exists():
                (group / name).write_text(str(plan["hard_limit_bytes"]))
                return
        log.warning("no memory cgroup found for %s: QEMU's memory is not capped", handle.host_identity)

    @staticmethod
    def _wait_off(d, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not d.isActive():
                return True
            time.sleep(0.1)
        return not d.isActive()

    def stop(self, handle: HostHandle, force: bool = False) -> str | None:
        wdir = self.files.dir(handle.workspace_id)
        d = self.connection.domain(handle)
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
                log.warning("ACPI shutdown of %s refused: %s", handle.host_identity, vir_error(exc))
            if self._wait_off(d, self.vm.shutdown_timeout):
                return f"stopped: the guest powered off on ACPI in {time.monotonic() - t0:.1f}s"
            self._power_off(d)
            return f"stopped: forced off after {self.vm.shutdown_timeout:g}s without powering off on ACPI"
        self._power_off(d)
        return "stopped: powered off" + (" (it was paused)" if not force else "")

    @staticmethod
    def _power_off(d) -> None:
        try:
            d.destroy()
        except libvirt.libvirtError as exc:
            if d.isActive():
                raise errors.BackendError(f"could not power off {d.name()}: {vir_error(exc)}") from None

    def pause(self, handle: HostHandle) -> str | None:
        self.connection.domain(handle).suspend()
        return "paused: the guest's vCPUs are stopped, its memory kept"

    def resume(self, handle: HostHandle) -> str | None:
        wdir = self.files.dir(handle.workspace_id)
        saved = wdir / "memory.save"
        if not saved.exists():
            self.connection.domain(handle).resume()
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
        self.network.ensure(handle.workspace_id)
        try:
            self.connection.get().restore(str(saved))
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} could not be restored: "
                                      f"{vir_error(exc)}") from None
        saved.unlink(missing_ok=True)
        (wdir / "suspend.json").unlink(missing_ok=True)
        self._booted.setdefault(handle.host_identity, 0.0)
        self._limit_memory(handle)
        return f"resumed: restored from its serialised state (digests checked) in {time.monotonic() - t0:.1f}s"

    def suspend(self, handle: HostHandle) -> str | None:
        wdir = self.files.dir(handle.workspace_id)
        saved = wdir / "memory.save"
        t0 = time.monotonic()
        self.save(handle, self.connection.domain(handle), "")
        memory = copysum.digest_file(str(saved))
        overlay = copysum.digest_file(str(wdir / "overlay.qcow2"))
        (wdir / "suspend.json").write_text(json.dumps({
            "memory_digest": memory.digest, "memory_bytes": memory.size,
            "overlay_digest": overlay.digest, "overlay_bytes": overlay.size, "time": time.time()}))
        return (f"suspended in {time.monotonic() - t0:.1f}s: memory state {units.format_size(memory.size)} "
                f"({memory.digest}), disk overlay {units.format_size(overlay.size)} ({overlay.digest})")

    def save(self, handle: HostHandle, d, why: str) -> None:
        """The guest's memory into its memory.save (the domain stops); nothing left on failure."""
        saved = self.files.dir(handle.workspace_id) / "memory.save"
        try:
            d.save(str(saved))
        except libvirt.libvirtError as exc:
            saved.unlink(missing_ok=True)
            raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} could not be saved{why}: "
                                      f"{vir_error(exc)}") from None
        self._booted.pop(handle.host_identity, None)

    def restore_saved(self, handle: HostHandle, state: model.State, xml: str | None, when: str) -> None:
        """Restores the guest from its memory.save, running or paused as state says."""
        self.network.ensure(handle.workspace_id)
        saved = self.files.dir(handle.workspace_id) / "memory.save"
        flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if state is model.State.PAUSED else libvirt.VIR_DOMAIN_SAVE_RUNNING
        try:
            self.connection.get().restoreFlags(str(saved), xml, flags)
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"the guest of workspaces/{handle.workspace_id} could not be restored {when}: "
                                      f"{vir_error(exc)}") from None
        saved.unlink(missing_ok=True)
        self._booted.setdefault(handle.host_identity, 0.0)
        self._limit_memory(handle)

    def reboot(self, handle: HostHandle) -> str | None:
        d = self.connection.domain(handle)
        try:
            d.reset(0)
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"could not reboot {handle.host_identity}: {vir_error(exc)}") from None
        self._booted[handle.host_identity] = time.monotonic()
        return "rebooted (reset)"

    def destroy(self, handle: HostHandle) -> None:
        d = self.connection.find(handle.host_identity)
        owner = domain_owner(d) if d is not None else None
        if owner is not None and owner[1] not in (self.manager, ""):
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
        self.network.release(handle.workspace_id)
        shutil.rmtree(self.files.dir(handle.workspace_id), ignore_errors=True)  # the image cache is kept

    # ----------------------------------------------------------------- migration
    def pack(self, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir: Path) -> Package:
        return packing.pack(self, handle, spec, state, workdir)

    def revert_pack(self, handle: HostHandle, package: Package, state: model.State) -> None:
        packing.revert_pack(self, handle, package, state)

    def unpack(self, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State
               ) -> HostHandle:
        return packing.unpack(self, workspace_id, spec, package, state)

    # ----------------------------------------------------------------- programs
    def wait_for_agent(self, handle: HostHandle, timeout: float | None = None) -> float:
        """Seconds until the guest agent answered; FailedPrecondition when it does not."""
        self.agent.require(handle, self.files.plan(handle.workspace_id).get("guest_agent", True))
        d = self.connection.domain(handle)
        return self.agent.wait(handle, d, self._booted.get(handle.host_identity, 0.0), timeout)

    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        # The guest resolves the path: no '..' climbs out of where it names.
        if ".." in options.working_directory.split("/"):
            raise errors.InvalidArgument("has a '..' component; name the directory without climbing out of it",
                                         "working_directory")
        self.wait_for_agent(handle)
        return self.agent.spawn(handle, options)

    # ----------------------------------------------------------------- host view
    def exists(self, handle: HostHandle) -> bool:
        return self.connection.find(handle.host_identity) is not None

    def inventory(self) -> dict[str, str]:
        found = {}
        for d in self.connection.get().listAllDomains(0):
            owner = domain_owner(d)  # None: not ours, no vws metadata
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
        self.destroy(HostHandle(wid or host_identity.removeprefix("vws-"), host_identity, self.kind))

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        """A restarted manager leaves running guests running. After a host restart a guest that
        should run is off: it is booted again."""
        if not running:
            return []
        d = self.connection.domain(handle)
        if d.isActive():
            return []
        self.start(handle)
        return ["guest booted again (it was off)"]

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        plan = self.files.plan(handle.workspace_id)
        if not plan:
            return None
        quota = plan.get("cpu_quota_us", 0)
        return model.Enforcement(
            mechanism=f"libvirt {plan.get('domain_type', self.domain_type)}",
            memory_limit_bytes=plan.get("memory_bytes", 0), cpu_quota_micros=quota,
            cpu_period_micros=dom_xml.CPU_PERIOD_US if quota else 0, disk_bytes=plan.get("disk_bytes", 0),
            disk_mount=str(self.files.dir(handle.workspace_id) / "overlay.qcow2"),
            network_bits_per_second=plan.get("network_bits_per_second", 0))

    def sample(self, handle: HostHandle) -> Counters | None:
        try:
            d = self.connection.get().lookupByName(handle.host_identity)
            if not d.isActive():
                return None
            info = d.info()
            c = Counters(time=time.time(), cpu_ns=int(info[4]), memory_limit=int(info[1]) * 1024)
            stats = d.memoryStats()
            c.memory_current = int(stats.get("rss", info[2])) * 1024
            net = self.network.counters(handle.workspace_id)
            if net is not None:
                c.net_rx, c.net_tx = net
            try:
                c.disk_used = int(d.blockInfo("vda")[1])
            except libvirt.libvirtError:
                pass
            return c
        except libvirt.libvirtError:
            return None

    def close(self) -> None:
        self.connection.close()
