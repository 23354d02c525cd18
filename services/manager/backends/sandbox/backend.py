"""SANDBOX workspaces: an account per workspace (as DynamicAccounts, whose limits, locking,
staging and cleaning apply unchanged) whose programs run inside the workspace's own mount, PID,
IPC, UTS, network and cgroup namespaces, made by bubblewrap (init.py).

Every Exec enters the workspace's one sandbox with nsenter (after joining the workspace's
cgroups as the account backend does) and drops to the account with setpriv. Its network is one
veth pair with a private /30 (host/netshape.py), shaped with tc.

The sandbox is made when first needed (start, or the setup script at realise) and killed at stop
(READY: the account exists, locked, with or without a sandbox); start makes it again. What the
host keeps of it is in <state_dir>/sandboxes/<workspace id>.json (state.py)."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from ....common import errors, host, model
from ..account.dynamic import DynamicAccounts
from ..account.users import getpw
from ..base import BackendSettings, Counters, HostHandle
from ..host import netshape
from ..host.cgroups import CgroupDriver
from . import init
from .state import SandboxState, SandboxStates, read

log = logging.getLogger("vws.manager.backends")

MECHANISM = "bubblewrap namespaces (mount, pid, ipc, uts, net, cgroup) + tc"


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
        self.states = SandboxStates(self.sandbox_dir)
        self._inits: dict[str, subprocess.Popen] = {}  # outer bwrap processes this process started
        self._binds = init.system_binds()

    # ------------------------------------------------------------------ sandbox
    def _ensure(self, wid: str) -> int:
        """The pid of the workspace's sandbox init, made if it is not running."""
        with self.states.lock(wid):
            st = self.states.load(wid)
            if st is None:
                pw = self.account(HostHandle(wid, self.account_name(wid)))
                st = self.states.new(wid, pw.pw_name, 0)
            pid = st.running_pid()
            if pid:
                return pid
            self._kill_sandbox(st)  # a half-dead one (init gone, veth left)
            return self._make_sandbox(st)

    def _make_sandbox(self, st: SandboxState) -> int:
        pw = getpw(st.account)
        if pw is None:
            raise errors.FailedPrecondition(f"account {st.account} of {st.workspace_id} is gone from the host")
        proc, pid = init.start(st, pw.pw_dir, self.states.log_path(st.workspace_id), self._binds)
        self._inits[st.workspace_id] = proc
        st.pid, st.start_time = pid, host.start_time(pid) or 0
        self.states.save(st)
        try:
            netshape.setup(pid, st.link, st.bits_per_second)
        except BaseException:
            self._kill_sandbox(st)
            raise
        return pid

    def _kill_sandbox(self, st: SandboxState) -> None:
        """Kills the init (the kernel then kills everything in its PID namespace) and removes the
        veth. Idempotent."""
        init.kill(st)
        proc = self._inits.pop(st.workspace_id, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("bwrap %d of %s did not exit after its sandbox was killed", proc.pid, st.workspace_id)
        netshape.teardown(st.link)
        if st.pid:
            st.pid = st.start_time = 0
            if self.states.path(st.workspace_id).exists():
                self.states.save(st)

    def _forget(self, st: SandboxState) -> None:
        self._kill_sandbox(st)
        self.states.remove(st)

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
        with self.states.lock(workspace_id):
            if self.states.load(workspace_id) is None:
                made = self.states.new(workspace_id, name, spec.resources.network_bits_per_second)
        try:
            return super().realise(workspace_id, spec)
        except BaseException:
            if made is not None:
                st = self.states.load(workspace_id)
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
            st = self.states.load(handle.workspace_id)
            if st is None or not st.running_pid():
                self._ensure(handle.workspace_id)
                done.append("sandbox")
        return done

    def stop(self, handle: HostHandle, force: bool = False) -> None:
        self.account(handle)
        with self.states.lock(handle.workspace_id):
            st = self.states.load(handle.workspace_id)
            if st is not None:
                self._kill_sandbox(st)
        super().stop(handle)

    def destroy(self, handle: HostHandle) -> None:
        pw = getpw(handle.host_identity)
        if pw is not None and not self.owns(pw, handle.workspace_id):
            raise errors.FailedPrecondition(f"refusing to delete account {handle.host_identity}: it is not "
                                            f"workspace {handle.workspace_id}'s")
        with self.states.lock(handle.workspace_id):
            st = self.states.load(handle.workspace_id)
            if st is not None:
                self._forget(st)
        super().destroy(handle)

    def inventory(self) -> dict[str, str]:
        found = super().inventory()
        for st in self.states.all():
            if st.account not in found:
                found[st.account] = st.workspace_id
        return found

    def reclaim(self, host_identity: str) -> None:
        for st in self.states.all():
            if st.account == host_identity and getpw(host_identity) is None:
                with self.states.lock(st.workspace_id):
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
        st = self.states.load(handle.workspace_id)
        return st.running_pid() if st else 0

    def link(self, handle: HostHandle) -> netshape.Link | None:
        st = self.states.load(handle.workspace_id)
        return st.link if st else None

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        e = super().enforcement(handle) or model.Enforcement()
        st = self.states.load(handle.workspace_id)
        mechanism = f"{e.mechanism} + {MECHANISM}" if e.mechanism else MECHANISM
        return dataclasses.replace(e, mechanism=mechanism,
                                   network_bits_per_second=st.bits_per_second if st else 0)

    def sample(self, handle: HostHandle) -> Counters | None:
        c = super().sample(handle)
        st = self.states.load(handle.workspace_id)
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
            st = read(path)
        except (OSError, ValueError, TypeError):
            continue
        if st.pid and host.start_time(st.pid) == st.start_time:
            try:
                os.kill(st.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        netshape.teardown(st.link)
        netshape.release(st.link, path)
