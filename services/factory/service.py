"""The factory's service layer: admit a request, record it, place it on a manager with room,
have that manager deploy it, and hand back the endpoint reference.

The record is written before anything else happens, under the client's request id, so that a
retried request finds it and carries on instead of making a second workspace; a request that
fails leaves no record behind (the manager undoes its own host changes)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import uuid
from typing import Callable, Protocol

import grpc

from vws.common import errors, model, names
from vws.common.model import State
from vws.factory.validation import IMPLEMENTED, NOT_YET, Limits, admit, check_request_id

log = logging.getLogger("vws.factory")

# Codes after which the next manager is worth trying.
TRY_NEXT = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED)


class RecordGateway(Protocol):
    """The repository as the factory uses it (gRPC in production, a fake in unit tests)."""

    def create_record(self, request_id: str, workspace: model.Workspace) -> tuple[model.Workspace, bool]: ...
    def assign(self, name: str, endpoint: model.Endpoint) -> model.Workspace: ...
    def delete_record(self, name: str, reason: str) -> None: ...
    def managers(self) -> list[model.ManagerInfo]: ...
    def pending(self) -> list[model.Workspace]: ...
    def get(self, name: str) -> model.Workspace: ...


class ManagerGateway(Protocol):
    def deploy(self, address: str, workspace: model.Workspace) -> model.Workspace: ...


@dataclasses.dataclass
class Refusal:
    manager: str
    reason: str


def free_room(m: model.ManagerInfo) -> model.Capacity:
    c, a = m.capacity, m.allocated
    return model.Capacity(c.workspaces - a.workspaces, c.memory_bytes - a.memory_bytes,
                          c.disk_bytes - a.disk_bytes, c.cpu_millis - a.cpu_millis)


def shortfall(m: model.ManagerInfo, spec: model.WorkspaceSpec) -> str:
    """Why this manager cannot take the workspace, or '' when it can."""
    if m.state is not model.ManagerState.AVAILABLE:
        return f"{m.state.value.lower()}: no heartbeat since {m.heartbeat_time:%H:%M:%S}" if m.heartbeat_time \
            else "not heard from"
    if spec.kind not in m.kinds:
        return f"does not offer {spec.kind.cli_name} workspaces"
    free, r = free_room(m), spec.resources
    if free.workspaces < 1:
        return f"all {m.capacity.workspaces} workspaces in use"
    for what, need, have, total in (("memory", r.memory_bytes, free.memory_bytes, m.capacity.memory_bytes),
                                    ("disk", r.disk_bytes, free.disk_bytes, m.capacity.disk_bytes),
                                    ("cpu", r.cpu_millis, free.cpu_millis, m.capacity.cpu_millis)):
        if total and need > have:
            return f"{what}: {need} wanted, {max(have, 0)} free of {total}"
    return ""


def rank(candidates: list[model.ManagerInfo]) -> list[model.ManagerInfo]:
    """Spread load: the manager with the largest share of its workspace slots free first."""
    def key(m: model.ManagerInfo):
        free = free_room(m)
        return (-(free.workspaces / max(m.capacity.workspaces, 1)), m.name)
    return sorted(candidates, key=key)


class WorkspaceFactory:
    def __init__(self, limits: Limits, records: RecordGateway, managers: ManagerGateway,
                 repository_address: str = "", clock: Callable[[], dt.datetime] = model.utcnow):
        self.limits, self.records, self.managers = limits, records, managers
        self.repository_address = repository_address
        self._clock = clock
        self._inflight: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._inflight.setdefault(key, threading.Lock())

    # ------------------------------------------------------------------ create
    def create(self, request_id: str, workspace: model.Workspace, kind_known: bool = True) -> model.Workspace:
        check_request_id(request_id)
        admitted = admit(workspace, self.limits, kind_known)
        request_id = request_id or f"auto-{uuid.uuid4()}"
        now = self._clock()
        admitted = dataclasses.replace(admitted, name=names.workspace_name(names.new_workspace_id()),
                                       state=State.PENDING, create_time=now,
                                       termination_time=now + admitted.spec.lifetime, request_id=request_id)
        with self._lock("request:" + request_id):
            record, created = self.records.create_record(request_id, admitted)
            if not created and record.state is not State.PENDING:
                log.info("request %s retried: returning %s (%s)", request_id, record.name, record.state.value)
                return record
            return self._drive(record)

    def _drive(self, record: model.Workspace) -> model.Workspace:
        """Places a PENDING record and has its manager deploy it; on failure removes the record."""
        with self._lock(record.name):
            try:
                return self._place(record)
            except BaseException as exc:
                try:
                    self.records.delete_record(record.name, f"create failed: {getattr(exc, 'message', exc)}")
                except Exception:  # noqa: BLE001 - the resume loop finds it again
                    log.exception("could not remove the record of failed create %s", record.name)
                raise

    def _place(self, record: model.Workspace) -> model.Workspace:
        refusals: list[Refusal] = []
        managers = self.records.managers()
        # A record already assigned (a retried or resumed create) goes back to its manager first.
        if record.endpoint.manager:
            managers.sort(key=lambda m: m.name != record.endpoint.manager)
        candidates = []
        for m in managers:
            why = shortfall(m, record.spec)
            if why and m.name != record.endpoint.manager:
                refusals.append(Refusal(m.name, why))
            else:
                candidates.append(m)
        if record.endpoint.manager:
            candidates = candidates[:1] + rank(candidates[1:])
        else:
            candidates = rank(candidates)
        for m in candidates:
            endpoint = model.Endpoint(record.name, m.name, m.address)
            assigned = self.records.assign(record.name, endpoint)
            try:
                deployed = self.managers.deploy(m.address, assigned)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
                if code in TRY_NEXT:
                    refusals.append(Refusal(m.name, f"{code.name}: {exc.details() if hasattr(exc, 'details') else exc}"))
                    log.info("manager %s refused %s: %s", m.name, record.name, refusals[-1].reason)
                    continue
                raise
            return dataclasses.replace(deployed, request_id=record.request_id,
                                       endpoint=dataclasses.replace(deployed.endpoint, workspace=record.name))
        if not managers:
            raise errors.ResourceExhausted(
                "no manager has registered with the repository; start one (vws manager) or wait for it",
                [("managers", "none registered")])
        raise errors.ResourceExhausted(
            f"no manager has room for this {record.spec.kind.cli_name} workspace: "
            + "; ".join(f"{r.manager}: {r.reason}" for r in refusals),
            [(r.manager, r.reason) for r in refusals])

    # ------------------------------------------------------------------ resume
    def resume_once(self, older_than: dt.timedelta) -> list[str]:
        """Drives on creations left PENDING by a factory that stopped (or a client that gave up)."""
        done = []
        for record in self.records.pending():
            if record.create_time and self._clock() - record.create_time < older_than:
                continue
            lock = self._lock(record.name)
            if not lock.acquire(blocking=False):
                continue  # being driven right now
            lock.release()
            try:
                self._drive(record)
                done.append(record.name)
            except errors.VwsError as exc:
                log.warning("resuming %s failed; record removed: %s", record.name, exc.message)
            except grpc.RpcError as exc:
                log.warning("resuming %s failed: %s", record.name, exc)
        return done

    def start_background(self, interval: float) -> None:
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.resume_once(dt.timedelta(seconds=max(interval, 30.0)))
                except Exception as exc:  # noqa: BLE001 - a background loop must outlive one bad round
                    if isinstance(exc, grpc.RpcError):
                        log.info("repository unreachable; resuming later")
                    else:
                        log.exception("resuming unfinished creates failed")
        self._thread = threading.Thread(target=loop, daemon=True, name="resume")
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ info
    def site_info(self) -> dict:
        managers = self.records.managers()
        available = [m for m in managers if m.state is model.ManagerState.AVAILABLE]
        kinds = []
        for kind in model.Kind:
            offering = [m for m in available if kind in m.kinds]
            if kind not in IMPLEMENTED:
                kinds.append((kind, False, NOT_YET[kind]))
            elif not offering:
                kinds.append((kind, False, "no available manager offers it right now"))
            else:
                free = sum(max(free_room(m).workspaces, 0) for m in offering)
                kinds.append((kind, free > 0, f"{free} free on {len(offering)} manager(s)" if free
                              else "every manager offering it is full"))
        return {"kinds": kinds, "limits": self.limits, "available_managers": len(available),
                "repository_address": self.repository_address}

