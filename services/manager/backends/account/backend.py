"""What both account plug-ins share (DynamicAccounts, AccountPool): a workspace is a Unix
account in cgroups of its own, with the limits, filesystem, lifecycle (locking, freezing),
programs and scrubbing here; each plug-in says where its accounts come from."""
from __future__ import annotations

import dataclasses
import grp
import logging
import pwd
import subprocess
import time
from pathlib import Path

from ....common import errors, model
from ..base import Backend, BackendSettings, Counters, ExecOptions, HostHandle, Package, host_capacity
from ..host.cgroups import CgroupDriver
from ..host.disk import DiskImages
from . import admission, leftovers, packing, users
from .programs import Programs
from .provisioning import Provisioner

log = logging.getLogger("vws.manager.backends")


class AccountBackend(Backend):
    kinds = frozenset({model.Kind.UNIX_ACCOUNT})
    shapes_network = False  # its workspaces use the host's network: no bandwidth can be enforced

    def __init__(self, settings: BackendSettings, cgroups: CgroupDriver | None = None):
        self.settings = settings
        self.manager_id = settings.manager_id
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.cgroups = cgroups or CgroupDriver(settings.cgroup_root, settings.manager_id)
        self._capacity: model.Capacity | None = None
        self.programs = Programs(self.cgroups, self.enter_prefix)
        self.provisioner = Provisioner(self.programs, self.cgroups, settings.state_dir, settings.setup_timeout)
        self._stale_cgroups: set[str] = set()
        # Each plug-in its own directory of images: several share one state_dir (accounts, sandboxes).
        self.disks = DiskImages(settings.state_dir / "disks" / self.name, settings.disk_stock_bytes,
                                settings.disk_stock)
        self._next_sweep = 0.0

    # -------------------------------------------------------------- plug-in hooks
    def offered_workspaces(self) -> int:
        """How many workspaces this plug-in can hold at once."""
        raise NotImplementedError

    def account(self, handle: HostHandle) -> pwd.struct_passwd:
        """The handle's account, checked to be this manager's and this workspace's."""
        raise NotImplementedError

    def enter_prefix(self, workspace_id: str) -> str:
        """Shell words run as root, already in the workspace's cgroups, between joining them and
        setpriv (a sandbox backend enters its namespaces here; the working directory is $PWD).
        Empty, or ending with a space."""
        return ""

    def disk_key(self, handle: HostHandle) -> str:
        """Whose name the workspace's disk image bears: the workspace's (the pool: its account's)."""
        return handle.workspace_id

    def mount_disk(self, pw: pwd.struct_passwd, workspace_id: str, spec: model.WorkspaceSpec,
                   home: Path | None = None) -> None:
        """Gives the workspace a filesystem of its own of at least spec's disk size on its home
        (or `home`), owned by the account, holding a copy of the skeleton. Nothing when 0."""
        if spec.resources.disk_bytes:
            self.disks.attach(workspace_id, spec.resources.disk_bytes, home or Path(pw.pw_dir), pw.pw_uid,
                              pw.pw_gid, self.settings.skeleton_dir)

    def unmount_disk(self, workspace_id: str) -> None:
        """Unmounts and deletes the workspace's filesystem, if any. Idempotent; kill first."""
        self.disks.release(workspace_id)

    def sweep_disks(self) -> list[str]:
        """Removes disk images (and their mounts) no workspace of this backend owns: what a crash
        between making and recording one left behind."""
        images = self.disks.images()  # listed before the owners: an image is made after its owner
        if not images:
            return []
        owned = set(self.inventory().values())
        return self.disks.sweep(owned)

    # --------------------------------------------------------------- enforcement
    def capacity(self) -> model.Capacity:
        """The host's figures, less a reserve of memory for the host itself when not configured."""
        if self._capacity is None:
            cap = host_capacity(self.settings, self.offered_workspaces())
            if not self.settings.memory_bytes and cap.memory_bytes:
                reserve = self.settings.memory_reserve_bytes
                if reserve < 0:
                    reserve = min(max(cap.memory_bytes // 16, 256 * 1024**2), 2 * 1024**3)
                cap.memory_bytes = max(cap.memory_bytes - reserve, 0)
            self._capacity = cap
        return self._capacity

    def check_admission(self, spec: model.WorkspaceSpec) -> None:
        """Refuses a spec this host cannot enforce as asked, before anything is made (admission.check)."""
        admission.check(spec, self.capacity(), self.cgroups, self.disks, self.shapes_network, self.manager_id)

    def apply_limits(self, workspace_id: str, spec: model.WorkspaceSpec) -> None:
        """Makes the workspace's cgroup(s) and writes its memory, CPU and process limits."""
        self.cgroups.create(workspace_id)
        r = spec.resources
        self.cgroups.set_limits(workspace_id, memory_bytes=r.memory_bytes, cpu_millis=r.cpu_millis,
                                max_processes=r.max_processes)

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        done = []
        if not self.cgroups.exists(handle.workspace_id):
            self.apply_limits(handle.workspace_id, spec)
            done.append("limits")
        key = self.disk_key(handle)
        if spec.resources.disk_bytes and self.disks.mount_point(key) is None:
            pw = users.getpw(handle.host_identity)
            if pw is None or not self.disks.image(key).exists():
                raise errors.BackendError(f"its filesystem (image {self.disks.image(key)}) is gone")
            self.disks.remount(key, Path(pw.pw_dir))
            done.append("filesystem")
        return done

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        lim = self.cgroups.limits(handle.workspace_id)
        disk = self.disks.usage(self.disk_key(handle))
        if lim is None and disk is None:
            return None
        e = model.Enforcement(mechanism=f"cgroup v{self.cgroups.version}", cgroup=self.cgroups.group(handle.workspace_id))
        if lim is not None:
            e.memory_limit_bytes, e.cpu_quota_micros = lim.memory_bytes, lim.cpu_quota_us
            e.cpu_period_micros, e.max_processes = lim.cpu_period_us, lim.max_processes
        if disk is not None:
            e.disk_bytes, _, e.disk_mount = disk
        return e

    def sample(self, handle: HostHandle) -> Counters | None:
        c = self.cgroups.counters(handle.workspace_id)
        disk = self.disks.usage(self.disk_key(handle))
        if c is None:
            if disk is None:
                return None
            c = Counters(time=time.time())
        if disk is not None:
            c.disk_used = disk[1]
        return c

    # ------------------------------------------------------------------ locking
    @staticmethod
    def lock(name: str) -> None:
        users.lock(name)

    @staticmethod
    def unlock(name: str) -> None:
        users.unlock(name)

    # ------------------------------------------------------------------ staging
    def prepare_or_undo(self, account: str, workspace_id: str, spec: model.WorkspaceSpec) -> HostHandle:
        """prepare the workspace on its account; on any failure destroy what realise made and
        raise the failure."""
        handle = HostHandle(workspace_id, account)
        try:
            pw = pwd.getpwnam(account)
            self.prepare(pw, workspace_id, spec)
        except BaseException:
            try:
                self.destroy(handle)
            except Exception:  # noqa: BLE001 - the original failure is what the caller needs
                log.exception("undoing the failed realise of %s", workspace_id)
            raise
        return handle

    def prepare(self, pw: pwd.struct_passwd, workspace_id: str, spec: model.WorkspaceSpec) -> None:
        """Groups, limits and filesystem, then the spec's software (provisioning). Raises on any
        failure; the caller undoes."""
        group = spec.software.unix_group
        if group and pw.pw_name not in grp.getgrnam(group).gr_mem:
            users.run_account_tool(["usermod", "--append", "--groups", group, pw.pw_name])
        self.apply_limits(workspace_id, spec)
        self.mount_disk(pw, workspace_id, spec)
        self.provisioner.provision(pw, workspace_id, spec)

    # ----------------------------------------------------------------- lifecycle
    def start(self, handle: HostHandle) -> None:
        pw = self.account(handle)
        self.cgroups.create(handle.workspace_id)
        self.cgroups.thaw(handle.workspace_id)
        self.unlock(pw.pw_name)

    def stop(self, handle: HostHandle, force: bool = False) -> None:
        pw = self.account(handle)
        self.kill_all(handle.workspace_id, pw)
        self.lock(pw.pw_name)

    def pause(self, handle: HostHandle) -> None:
        pw = self.account(handle)
        self.cgroups.create(handle.workspace_id)
        # Processes the account started outside vws (an ssh login, a cron job) are pulled in first.
        inside = self.cgroups.pids(handle.workspace_id)
        for pid in leftovers.uid_pids(pw.pw_uid):
            if pid not in inside:
                try:
                    self.cgroups.add(handle.workspace_id, pid)
                except (ProcessLookupError, OSError):
                    pass  # it exited meanwhile
        self.cgroups.freeze(handle.workspace_id)

    def resume(self, handle: HostHandle) -> None:
        self.account(handle)
        self.cgroups.thaw(handle.workspace_id)

    # ----------------------------------------------------------------- migration
    # The home moves as one archive (packing); running processes stay frozen while it is made,
    # and start afresh on the destination.
    def pack(self, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir: Path) -> Package:
        pw = self.account(handle)
        if state is model.State.RUNNING:
            self.pause(handle)  # a consistent archive: nothing writes while it is made
        archive = Path(workdir) / packing.HOME_ARCHIVE
        try:
            packing.archive_home(pw, archive)
        except BaseException:
            self.revert_pack(handle, Package({}), state)
            raise
        return Package({"home": archive}, {"account": pw.pw_name})

    def revert_pack(self, handle: HostHandle, package: Package, state: model.State) -> None:
        if state is model.State.RUNNING:
            self.resume(handle)
        for path in package.files.values():
            Path(path).unlink(missing_ok=True)

    def unpack(self, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State
               ) -> HostHandle:
        # The set-up script ran and the staged files are in the archive: neither again.
        bare = dataclasses.replace(spec, software=dataclasses.replace(spec.software, setup_script="", files=[]))
        handle = self.realise(workspace_id, bare)
        try:
            packing.extract_home(self.account(handle), package.files["home"])
            if state in (model.State.RUNNING, model.State.PAUSED):
                self.start(handle)
            if state is model.State.PAUSED:
                self.pause(handle)
        except BaseException:
            self.destroy(handle)
            raise
        return handle

    # ---------------------------------------------------------------------- exec
    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        pw = self.account(handle)
        return self.programs.start(pw, handle.workspace_id, options, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill_all(self, workspace_id: str, pw: pwd.struct_passwd | None) -> None:
        """Every process of the workspace (Programs.kill_all)."""
        self.programs.kill_all(workspace_id, pw)

    # ----------------------------------------------------------------- scrubbing
    def scrub(self, pw: pwd.struct_passwd | None, workspace_id: str) -> None:
        """Kills every process, unmounts the workspace's own filesystem and removes everything
        the account has outside its home."""
        self.kill_all(workspace_id, pw)
        self.unmount_disk(workspace_id)
        if pw is not None:
            leftovers.remove_outside_home(pw)
        self.remove_cgroup(workspace_id)

    def remove_cgroup(self, workspace_id: str) -> None:
        try:
            self.cgroups.remove(workspace_id, timeout=1.0)
            self._stale_cgroups.discard(workspace_id)
        except errors.BackendError as exc:
            # A killed process not yet reaped by its parent keeps it busy: maintain() retries.
            log.warning("%s; retrying in the background", exc)
            self._stale_cgroups.add(workspace_id)

    # --------------------------------------------------------------- maintenance
    def close(self) -> None:
        self.maintain_cgroups()
        self.cgroups.remove_manager_dirs()
        self.cgroups.close()
        self.disks.close()

    def maintain(self) -> None:
        self.maintain_cgroups()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + 60
            self.sweep_disks()

    def maintain_cgroups(self) -> None:
        for wid in list(self._stale_cgroups):
            try:
                self.cgroups.remove(wid, timeout=0.0)
                self._stale_cgroups.discard(wid)
            except errors.BackendError:
                pass
