"""The manager's backend plug-in interface: how a workspace becomes something real on this
host. The service layer (vws.manager.service) talks to the host only through a Backend."""
from __future__ import annotations

import abc
import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Callable

from ...common import errors, kinds, model

# progress(activity, done_bytes, total_bytes): long work in realise (an image copy) reports here.
ProgressFn = Callable[[str, int, int], None]


@dataclasses.dataclass(frozen=True)
class HostHandle:
    """What a backend needs to find a workspace on the host again."""
    workspace_id: str
    host_identity: str  # the Unix account name
    kind: model.Kind = model.Kind.UNIX_ACCOUNT  # which plug-in holds it (see backends.router)


@dataclasses.dataclass
class Counters:
    """One sample of a workspace's counters as the host keeps them. Cumulative counters restart
    from zero when the workspace's cgroup is made again (a stop and start, a restart of the
    host); the accounting core (vws.native.accounting) handles such resets."""
    time: float                 # time.time() when sampled
    cpu_ns: int = 0             # cumulative CPU time, user + system
    cpu_throttled_ns: int = 0   # cumulative time throttled by the CPU quota
    memory_current: int = 0
    memory_peak: int = 0        # the most the group has used since it was made, where the host keeps it
    memory_limit: int = 0       # 0: none
    oom_kills: int = 0          # cumulative
    disk_used: int = 0
    net_rx: int = 0             # cumulative bytes
    net_tx: int = 0


@dataclasses.dataclass
class ExecOptions:
    argv: list[str]
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    working_directory: str = ""


@dataclasses.dataclass
class Package:
    """A workspace serialised for migration: its files on this host by role (what the
    destination must receive), and what the same backend on the destination needs to know to
    restore it (JSON-able)."""
    files: dict[str, Path]
    meta: dict = dataclasses.field(default_factory=dict)


SETUP_FIELD = "workspace.spec.software.setup_script"


class SetupFailed(errors.InvalidArgument):
    """The workspace's setup script exited non-zero; everything it did was undone."""

    def __init__(self, status: int, output_tail: str):
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        text = f"the setup script {how}; nothing was kept"
        if output_tail:
            text += f"; the last lines of its output:\n{output_tail}"
        super().__init__(text, SETUP_FIELD)
        self.status = status
        self.output_tail = output_tail


class SetupTimedOut(errors.DeadlineExceeded):
    """The workspace's setup script outlasted the manager's setup_timeout; it was killed and
    everything it did was undone."""

    def __init__(self, limit: float, output_tail: str):
        text = (f"{SETUP_FIELD}: the setup script was still running after {limit:g}s, this manager's limit "
                "(setup_timeout), and was killed; nothing was kept; make it finish sooner")
        if output_tail:
            text += f"; the last lines of its output:\n{output_tail}"
        super().__init__(text)
        self.limit, self.output_tail = limit, output_tail


@dataclasses.dataclass
class BackendSettings:
    kind: str  # the plug-in: dynamic-accounts | account-pool (the `backend` setting) | sandbox | libvirt
    manager_id: str
    state_dir: Path
    account_prefix: str = "vws-"
    pool_prefix: str = "vwsp"
    pool_size: int = 8
    quarantine_seconds: float = 60.0
    max_workspaces: int = 64
    skeleton_dir: Path = Path("/etc/skel")
    home_base: Path | None = None  # where account homes are made; None: useradd's (HOME in /etc/default/useradd)
    cgroup_root: Path = Path("/sys/fs/cgroup")  # ManagerSettings.cgroup_root is a str: coerced below
    memory_bytes: int = 0  # 0: the host's total RAM
    disk_bytes: int = 0  # 0: the free space of state_dir
    cpu_millis: int = 0  # 0: every core
    setup_timeout: float = 120.0  # a setup script still running after this is killed and fails
    disk_stock_bytes: int = 1024**3  # the size of the ready disk images (the site's default disk)
    disk_stock: int = 2  # how many are kept ready, once a workspace has asked for that size
    memory_reserve_bytes: int = -1  # kept for the host when memory_bytes is 0; -1: 1/16 of it, 256M-2G

    def __post_init__(self):
        self.state_dir = Path(self.state_dir)
        self.skeleton_dir = Path(self.skeleton_dir)
        self.home_base = Path(self.home_base) if self.home_base else None
        self.cgroup_root = Path(self.cgroup_root)


def host_capacity(settings: BackendSettings, workspaces: int) -> model.Capacity:
    """The capacity offered: the configured figures, or the host's own where they are 0."""
    memory = settings.memory_bytes
    if not memory:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemTotal:"):
                        memory = int(line.split()[1]) * 1024
                        break
        except OSError:
            memory = 0
    disk = settings.disk_bytes
    if not disk:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(settings.state_dir)
        disk = st.f_bavail * st.f_frsize
    cpu = settings.cpu_millis or (os.cpu_count() or 1) * 1000
    return model.Capacity(workspaces=workspaces, memory_bytes=memory, disk_bytes=disk, cpu_millis=cpu)


class Backend(abc.ABC):
    name: str
    kinds: frozenset[model.Kind]

    @abc.abstractmethod
    def capacity(self) -> model.Capacity: ...

    # What the host identity names, for messages: "account", "domain".
    host_noun: str = "account"
    # The pool its accounts are leased from, published with the manager's registration: a
    # workspace the site's policy puts in a pool goes only to managers of that pool.
    account_pool: str = ""

    @abc.abstractmethod
    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress: ProgressFn | None = None) -> HostHandle:
        """Makes the workspace exist, locked (nothing runs, nobody logs in) until start.
        Idempotent on workspace_id; on failure nothing is left. Long work (copying an image)
        calls progress as it goes."""

    @abc.abstractmethod
    def start(self, handle: HostHandle) -> None: ...

    @abc.abstractmethod
    def stop(self, handle: HostHandle, force: bool = False) -> str | None:
        """Kills every process of the workspace and locks it (a guest is shut down, or with force
        powered off). May return what happened, for the history."""

    @abc.abstractmethod
    def pause(self, handle: HostHandle) -> None: ...

    @abc.abstractmethod
    def resume(self, handle: HostHandle) -> None: ...

    @abc.abstractmethod
    def destroy(self, handle: HostHandle) -> None:
        """Removes every trace of the workspace. Idempotent."""

    @abc.abstractmethod
    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        """Starts a program in the workspace with piped standard streams, in a new session."""

    @abc.abstractmethod
    def exists(self, handle: HostHandle) -> bool: ...

    @abc.abstractmethod
    def inventory(self) -> dict[str, str]:
        """host_identity -> workspace_id of everything this manager made or leased on the host."""

    @abc.abstractmethod
    def reclaim(self, host_identity: str) -> None:
        """Destroys what inventory() lists under host_identity, with no workspace record."""

    def suspend(self, handle: HostHandle) -> str | None:
        """Serialises the workspace to the manager's storage (RUNNING or PAUSED -> SUSPENDED)."""
        raise errors.FailedPrecondition(
            f"{kinds.name_of(handle.kind)} workspaces cannot be suspended: their processes cannot be serialised on "
            "this host; pause it instead (processes frozen in memory)")

    def reboot(self, handle: HostHandle) -> str | None:
        raise errors.FailedPrecondition(
            f"{kinds.name_of(handle.kind)} workspaces have no system to reboot; stop and start it instead")

    def pack(self, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir: Path) -> Package:
        """Serialises the workspace for migration (files into workdir, or files it already has):
        nothing runs in it afterwards until revert_pack here or unpack on the destination."""
        raise errors.FailedPrecondition(f"{kinds.name_of(handle.kind)} workspaces cannot migrate from this manager "
                                        f"({self.name})")

    def revert_pack(self, handle: HostHandle, package: Package, state: model.State) -> None:
        """The migration failed: the workspace carries on here as it was, in state."""

    def unpack(self, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State
               ) -> HostHandle:
        """On the destination: makes the workspace from a package received, in state (one of
        model.MIGRATABLE). On failure nothing is left."""
        raise errors.FailedPrecondition(f"{kinds.name_of(spec.kind)} workspaces cannot migrate to this manager ({self.name})")

    def describe(self, handle: HostHandle) -> str:
        """How messages name what realises the workspace on the host, e.g. `account vws-w1`."""
        return f"{self.host_noun} {handle.host_identity}"

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        """The limits in force for the workspace, as the host sees them."""
        return None

    def sample(self, handle: HostHandle) -> Counters | None:
        """The workspace's counters now; None when it has none (not realised)."""
        return None

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        """Puts back what a restart of the host took from a workspace that still exists (its
        limits, its filesystem, its sandbox when it is running). Returns what was restored;
        raises a VwsError when it cannot be."""
        return []

    def maintain(self) -> None:
        """Called about every second from a background thread."""

    def close(self) -> None:
        pass
