"""SANDBOX workspaces: an account per workspace (as DynamicAccounts, whose limits, locking,
staging and cleaning apply unchanged) whose programs run inside the workspace's own mount, PID,
IPC, UTS, network and cgroup namespaces, made by bubblewrap.

A sandbox is a long-lived init: `bwrap` (pid 1 inside, reaping orphans) running `sleep infinity`,
in its own session so that it outlives a restart of the manager. Its root is a read-only tmpfs
holding read-only binds of the host's /usr and /etc (and the merged-/usr links /bin, /lib...),
a fresh /proc and /dev, private writable /tmp and /dev/shm, and the workspace's home, the only
part of the host that is writable. Every Exec enters that same sandbox with nsenter (after
joining the workspace's cgroups as the account backend does) and drops to the account with
setpriv. Its network is one veth pair with a private /30 (netshape.py), shaped with tc.

The sandbox is made when first needed (start, or the setup script at realise) and killed at stop
(READY: the account exists, locked, with or without a sandbox); start makes it again. The
init's pid and start time (guarding against pid reuse), the network slot and the bandwidth live
in <state_dir>/sandboxes/<workspace id>.json."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from ....common import errors, host, model
from ..account.dynamic import DynamicAccounts
from ..account.users import ROOT_PATH, getpw
from ..base import BackendSettings, Counters, HostHandle
from ..host import netshape
from ..host.cgroups import CgroupDriver

log = logging.getLogger("vws.manager.backends")

MECHANISM = "bubblewrap namespaces (mount, pid, ipc, uts, net, cgroup) + tc"
READY_TIMEOUT = 10.0
SYSTEM_BINDS = ("/usr", "/etc")
MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# pid 1 of the sandbox is bwrap itself (it reaps the orphans of every Exec); this is its only child.
# It says it runs (every mount is in place) on its standard output, a pipe, then waits forever.
INIT_SCRIPT = "printf 1; exec >/dev/null; exec sleep infinity"


def system_binds() -> list[str]:
    """bwrap arguments for the host's system directories, read-only."""
    args: list[str] = []
    for d in SYSTEM_BINDS:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for d in MERGED_USR_LINKS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


@dataclasses.dataclass
class SandboxState:
    workspace_id: str
    account: str
    net: int                    # netshape slot
    bits_per_second: int = 0    # 0: not shaped
    pid: int = 0                # the init (pid 1 inside), 0 when no sandbox runs
    start_time: int = 0

    @property
    def link(self) -> netshape.Link:
        return netshape.Link(self.net)


class SandboxBackend(DynamicAccounts):
    name = "sandbox"
    kinds = frozenset({model.Kind.SANDBOX})
    shapes_network = True  # a veth of its own, shaped with tc

    # Its own GECOS mark: a dynamic-accounts plug-in of the same manager (same prefix, same
    # manager id) must neither list nor reclaim sandbox accounts as its own, nor the reverse.
    owner_mark = "vws-sandbox"

    def __init__(self, settings: BackendSettings, cgroups: CgroupDriver | None = None):
        super().__init__(settings, cgroups)
        self.sandbox_dir = settings.state_dir / "sandboxes"
        self.sandbox_dir.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._inits: dict[str, subprocess.Popen] = {}  # outer bwrap processes this process started
        self._binds = system_binds()

    # --------------------------------------------------------------------- state
    def _lock(self, wid: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(wid, threading.Lock())

    def _state_path(self, wid: str) -> Path:
        return self.sandbox_dir / f"{wid}.json"

    def _load(self, wid: str) -> SandboxState | None:
        try:
            return SandboxState(**json.loads(self._state_path(wid).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("unreadable sandbox state of %s (%s): treated as none", wid, exc)
            return None

    def _save(self, st: SandboxState) -> None:
        path = self._state_path(st.workspace_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(st)))
        os.replace(tmp, path)

    def _next_slot(self) -> int:
        """Where the search for a free network slot starts: a counter kept in state_dir."""
        counter = self.sandbox_dir / "net-counter"
        try:
            n = int(counter.read_text())
        except (FileNotFoundError, ValueError):
            n = 0
        counter.write_text(str((n + 1) % netshape.SLOTS))
        return n

    def _running_pid(self, st: SandboxState) -> int:
        """The init's pid if it is still the same process and runs, else 0."""
        if st.pid and host.start_time(st.pid) == st.start_time and host.alive(st.pid):
            return st.pid
        return 0

    # ------------------------------------------------------------------ sandbox
    def _new_state(self, wid: str, account: str, bits: int) -> SandboxState:
        path = self._state_path(wid)
        link = netshape.reserve(self._next_slot(), path)
        st = SandboxState(wid, account, link.index, bits)
        self._save(st)
        return st

    def _ensure(self, wid: str) -> int:
        """The pid of the workspace's sandbox init, made if it is not running."""
        with self._lock(wid):
            st = self._load(wid)
            if st is None:
                pw = self.account(HostHandle(wid, self.account_name(wid)))
                st = self._new_state(wid, pw.pw_name, 0)
            pid = self._running_pid(st)
            if pid:
                return pid
            self._kill_sandbox(st)  # a half-dead one (init gone, veth left)
            return self._make_sandbox(st)

    def bwrap_argv(self, st: SandboxState, home: str, info_fd: int) -> list[str]:
        return ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
                "--unshare-cgroup-try", *self._binds,
                "--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm",
                "--dir", "/var", "--symlink", "../tmp", "/var/tmp",
                *self._parents(home), "--bind", home, home, "--hostname", st.workspace_id, "--remount-ro", "/",
                "--cap-drop", "ALL", "--info-fd", str(info_fd), "--chdir", "/",
                "--", "/bin/sh", "-c", INIT_SCRIPT]

    @staticmethod
    def _parents(home: str) -> list[str]:
        """The home's parents as directories anyone may enter and list (they hold only the home)."""
        args: list[str] = []
        for parent in reversed(Path(home).parents[:-1]):
            args += ["--perms", "0755", "--dir", str(parent)]
        return args

    def _make_sandbox(self, st: SandboxState) -> int:
        pw = getpw(st.account)
        if pw is None:
            raise errors.FailedPrecondition(f"account {st.account} of {st.workspace_id} is gone from the host")
        info_r, info_w = os.pipe()
        ready_r, ready_w = os.pipe()
        log_path = self.sandbox_dir / f"{st.workspace_id}.log"
        try:
            with open(log_path, "wb") as log_file:
                proc = subprocess.Popen(self.bwrap_argv(st, pw.pw_dir, info_w), pass_fds=(info_w,),
                                        stdin=subprocess.DEVNULL, stdout=ready_w, stderr=log_file,
                                        env={"PATH": ROOT_PATH}, start_new_session=True, cwd="/")
            os.close(info_w)
            os.close(ready_w)
            info_w = ready_w = -1
            info = self._read_until_eof(info_r)
            ready = self._read_one(ready_r)
        finally:
            for fd in (info_r, ready_r, info_w, ready_w):
                if fd >= 0:
                    os.close(fd)
        pid = 0
        try:
            pid = int(json.loads(info)["child-pid"]) if info else 0
        except (ValueError, KeyError):
            pass
        if not pid or ready != b"1":
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            text = log_path.read_text(errors="replace").strip()
            raise errors.BackendError(f"bwrap did not start the sandbox of {st.workspace_id} "
                                      f"(status {proc.returncode}): {text[-2000:]}")
        self._inits[st.workspace_id] = proc
        st.pid, st.start_time = pid, host.start_time(pid) or 0
        self._save(st)
        try:
            netshape.setup(pid, st.link, st.bits_per_second)
        except BaseException:
            self._kill_sandbox(st)
            raise
        return pid

    @staticmethod
    def _read_until_eof(fd: int) -> bytes:
        data, deadline = b"", time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return b""
            chunk = os.read(fd, 4096)
            if not chunk:
                return data
            data += chunk

    @staticmethod
    def _read_one(fd: int) -> bytes:
        if not select.select([fd], [], [], READY_TIMEOUT)[0]:
            return b""
        return os.read(fd, 1)

    def _kill_sandbox(self, st: SandboxState) -> None:
        """Kills the init (the kernel then kills everything in its PID namespace) and removes the
        veth. Idempotent."""
        pid = self._running_pid(st)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 5
            while host.alive(pid) and host.start_time(pid) == st.start_time:
                if time.monotonic() > deadline:
                    raise errors.BackendError(f"sandbox init {pid} of {st.workspace_id} survived SIGKILL for 5s")
                time.sleep(0.001)
        proc = self._inits.pop(st.workspace_id, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("bwrap %d of %s did not exit after its sandbox was killed", proc.pid, st.workspace_id)
        netshape.teardown(st.link)
        if st.pid:
            st.pid = st.start_time = 0
            if self._state_path(st.workspace_id).exists():
                self._save(st)

    def _forget(self, st: SandboxState) -> None:
        self._kill_sandbox(st)
        netshape.release(st.link, self._state_path(st.workspace_id))
        self._state_path(st.workspace_id).unlink(missing_ok=True)
        (self.sandbox_dir / f"{st.workspace_id}.log").unlink(missing_ok=True)
        with self._locks_lock:
            self._locks.pop(st.workspace_id, None)

    # ---------------------------------------------------------------- the hook
    def enter_prefix(self, workspace_id: str) -> str:
        pid = self._ensure(workspace_id)
        # --wdns: the working directory inside (the root shell's, the home or below, bound at the same path)
        return (f"nsenter --target={pid} --mount --uts --ipc --net --pid --root "
                f"--wdns=\"$PWD\" -- ")

    # ----------------------------------------------------------------- lifecycle
    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress=None) -> HostHandle:
        name = self.account_name(workspace_id)
        made = None
        with self._lock(workspace_id):
            if self._load(workspace_id) is None:
                made = self._new_state(workspace_id, name, spec.resources.network_bits_per_second)
        try:
            return super().realise(workspace_id, spec)
        except BaseException:
            if made is not None:
                st = self._load(workspace_id)
                if st is not None and getpw(name) is None:
                    self._forget(st)
            raise

    def start(self, handle: HostHandle) -> None:
        self.account(handle)
        self._ensure(handle.workspace_id)
        super().start(handle)

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        done = super().restore(handle, spec, running)
        if running:
            st = self._load(handle.workspace_id)
            if st is None or not self._running_pid(st):
                self._ensure(handle.workspace_id)
                done.append("sandbox")
        return done

    def stop(self, handle: HostHandle, force: bool = False) -> None:
        self.account(handle)
        with self._lock(handle.workspace_id):
            st = self._load(handle.workspace_id)
            if st is not None:
                self._kill_sandbox(st)
        super().stop(handle)

    def destroy(self, handle: HostHandle) -> None:
        pw = getpw(handle.host_identity)
        if pw is not None and not self.owns(pw, handle.workspace_id):
            raise errors.FailedPrecondition(f"refusing to delete account {handle.host_identity}: it is not "
                                            f"workspace {handle.workspace_id}'s")
        with self._lock(handle.workspace_id):
            st = self._load(handle.workspace_id)
            if st is not None:
                self._forget(st)
        super().destroy(handle)

    def inventory(self) -> dict[str, str]:
        found = super().inventory()
        for path in self.sandbox_dir.glob("*.json"):
            st = self._load(path.stem)
            if st is not None and st.account not in found:
                found[st.account] = st.workspace_id
        return found

    def reclaim(self, host_identity: str) -> None:
        for path in self.sandbox_dir.glob("*.json"):
            st = self._load(path.stem)
            if st is not None and st.account == host_identity and getpw(host_identity) is None:
                with self._lock(st.workspace_id):
                    self._forget(st)
        super().reclaim(host_identity)

    def maintain(self) -> None:
        super().maintain()
        for wid, proc in list(self._inits.items()):
            if proc.poll() is not None:
                self._inits.pop(wid, None)

    # ------------------------------------------------------------ observation
    def sandbox_pid(self, handle: HostHandle) -> int:
        """The init's pid (pid 1 inside), 0 when no sandbox runs."""
        st = self._load(handle.workspace_id)
        return self._running_pid(st) if st else 0

    def link(self, handle: HostHandle) -> netshape.Link | None:
        st = self._load(handle.workspace_id)
        return st.link if st else None

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        e = super().enforcement(handle) or model.Enforcement()
        st = self._load(handle.workspace_id)
        mechanism = f"{e.mechanism} + {MECHANISM}" if e.mechanism else MECHANISM
        return dataclasses.replace(e, mechanism=mechanism,
                                   network_bits_per_second=st.bits_per_second if st else 0)

    def sample(self, handle: HostHandle) -> Counters | None:
        c = super().sample(handle)
        st = self._load(handle.workspace_id)
        if c is None:
            if st is None or not self.exists(handle):
                return None
            c = Counters(time=time.time())
        if st is not None:
            c.net_rx, c.net_tx = netshape.counters(st.link)
        return c


def reap_all_under(root: Path | str) -> None:
    """Kills the sandbox and removes the veth and network reservation of every sandbox state file
    under root: for tests that stop a manager without destroying its workspaces (the inits run as
    root in their own sessions, so killing the accounts' processes leaves them)."""
    for path in Path(root).rglob("sandboxes/*.json"):
        try:
            st = SandboxState(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if st.pid and host.start_time(st.pid) == st.start_time:
            try:
                os.kill(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        netshape.teardown(st.link)
        netshape.release(st.link, path)
