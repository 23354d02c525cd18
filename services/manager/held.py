"""The workspaces this manager holds, as its parts share them: the lock each is changed under,
how each looks to the rest of the system, the room they take on the host, and the recording of
a change (on local record, then delivered to the repository in order). The manager's core,
its migrations and its usage accounting are each given this one book at construction."""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Protocol

import grpc

from ..common import clients, errors, model, names, units
from .backends.base import Backend
from .state import LocalState, LocalWorkspace, Report

log = logging.getLogger("vws.manager")

# What a call to a repository that does not answer (or answers too late) raises.
UNREACHABLE = clients.UNREACHABLE


def is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, grpc.RpcError):
        exc = errors.from_rpc_error(exc)
    return isinstance(exc, UNREACHABLE)


def described(exc: BaseException) -> object:
    """What a failed call to another service said, for a log line."""
    return errors.from_rpc_error(exc).message if isinstance(exc, grpc.RpcError) else exc


@dataclasses.dataclass
class ManagerIdentity:
    manager_id: str
    address: str
    heartbeat_interval: float = 2.0

    @property
    def name(self) -> str:
        return names.manager_name(self.manager_id)


class StateReceiver(Protocol):
    """Where recorded changes go (the repository; vws.manager.service.RepositoryGateway)."""

    def report(self, manager: str, report: Report) -> None: ...


class HeldWorkspaces:
    def __init__(self, identity: ManagerIdentity, state: LocalState, backend: Backend, repository: StateReceiver):
        self.identity, self.state, self.backend, self.repository = identity, state, backend, repository
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._flush_lock = threading.Lock()

    # ----------------------------------------------------------------- the book
    def lock(self, name: str) -> threading.Lock:
        """The lock a workspace is changed under (deploy, moves, destroy, migration, events)."""
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def require(self, name: str, field: str = "name") -> LocalWorkspace:
        names.parse_workspace_name(name, field)
        ws = self.state.get(name)
        if ws is None:
            raise errors.NotFound(f"workspace {name} is not on manager {self.identity.name}")
        return ws

    def view(self, ws: LocalWorkspace, enforcement: model.Enforcement | None = None) -> model.Workspace:
        return model.Workspace(
            name=ws.name, spec=ws.spec, state=ws.state, state_message=ws.state_message,
            endpoint=model.Endpoint(ws.name, self.identity.name, self.identity.address, ws.host_identity),
            owner=ws.owner, termination_time=ws.termination_time, labels=ws.labels, create_time=ws.create_time,
            enforcement=enforcement)

    # ----------------------------------------------------------------- changes
    def record(self, ws: LocalWorkspace, state: model.State, message: str,
               event_type: model.EventType = model.EventType.STATE_CHANGED,
               enforcement: model.Enforcement | None = None) -> None:
        """Moves a workspace to a state on local record and delivers what is queued."""
        self.state.change(ws, state, message, event_type, enforcement=enforcement)
        self.flush()

    def flush(self) -> int:
        """Delivers queued state changes in order; stops at the first that cannot be delivered."""
        sent = 0
        with self._flush_lock:
            for report in self.state.pending_reports():
                try:
                    self.repository.report(self.identity.name, report)
                except Exception as exc:  # noqa: BLE001
                    if is_unreachable(exc):
                        return sent
                    # The repository refused it for good (record gone, reassigned): drop it.
                    log.warning("repository refused the report on %s (%s): %s", report.name,
                                report.state.value, described(exc))
                self.state.delivered(report.seq)
                sent += 1
        return sent

    # ----------------------------------------------------------------- room
    def allocated(self) -> model.Capacity:
        """What the workspaces held here take, and those accepted and on their way (migrations)."""
        total = model.Capacity()
        for spec in [ws.spec for ws in self.state.all()] + [w.spec for w in self.state.arriving()]:
            total = total.plus(model.Capacity.of(spec))
        return total

    def check_room(self, spec: model.WorkspaceSpec) -> None:
        cap, used = self.backend.capacity(), self.allocated()
        wanted = spec.resources
        short, lacking = [], cap.short(used, model.Capacity.of(spec))
        if "workspaces" in lacking:
            short.append(("workspaces", f"{used.workspaces} of {cap.workspaces} workspaces in use"))
        size, millis = units.format_size, (lambda v: f"{v}m")
        for label, need, have, total, fmt in (
                ("memory", wanted.memory_bytes, used.memory_bytes, cap.memory_bytes, size),
                ("disk", wanted.disk_bytes, used.disk_bytes, cap.disk_bytes, size),
                ("cpu", wanted.cpu_millis, used.cpu_millis, cap.cpu_millis, millis)):
            if label in lacking:
                short.append((label, f"{label}: {fmt(need)} wanted, {fmt(max(total - have, 0))} of {fmt(total)} free"))
        if short:
            raise errors.ResourceExhausted(
                f"manager {self.identity.name} has no room: " + "; ".join(d for _, d in short),
                [(f"{self.identity.name}/{s}", d) for s, d in short])

    def check_pool(self, workspace: model.Workspace) -> None:
        """A workspace the site's policy puts in an account pool is realised only by a manager
        leasing from that pool."""
        pool, mine = workspace.account_pool, self.backend.account_pool
        if pool and pool != mine:
            raise errors.FailedPrecondition(
                f"the site's policy puts {workspace.name} in account pool {pool}, and manager {self.identity.name} "
                f"leases from {'pool ' + mine if mine else 'no pool'}; choose a manager of pool {pool} "
                "(vws managers shows each one's pool)")

