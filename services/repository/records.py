"""The records of workspaces, as the factory and the managers keep them: a create (decided by
the site's policy, idempotent on its request id), its placement on a manager, a migration's
move, each state and progress a manager reports, and the removal of a create that failed."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import math
from typing import Callable

import sqlalchemy as sa

from ..common import converters, errors, kinds, model, names
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from ..common.model import EventType, State
from . import store
from .access import AccessStore, group_usage
from .db import EventRow, UnitOfWork, WorkspaceLabelRow, WorkspaceRow
from .lifetimes import DestroyRetries
from .policy import Decision, PolicyFile, WorkspaceRequest
from ..v1 import workspace_pb2

log = logging.getLogger("vws.repository")


def request_digest(workspace: model.Workspace) -> str:
    """What makes two creates with one request id the same request: the spec, owner and labels
    (not the termination time, which the factory derives from the clock)."""
    h = hashlib.sha256(converters.spec_to_pb(workspace.spec).SerializeToString(deterministic=True))
    h.update(json.dumps([workspace.owner, sorted(workspace.labels.items())]).encode())
    return h.hexdigest()


def check_progress(p: model.Progress) -> None:
    v = []
    if len(p.activity) > 256 or "\0" in p.activity:
        v.append(("progress.activity", "must be at most 256 characters without NUL, like `propagating image busybox`"))
    for field in ("done_bytes", "total_bytes"):
        if getattr(p, field) < 0:
            v.append((f"progress.{field}", f"is negative ({getattr(p, field)}); give a count of bytes"))
    if p.total_bytes > 0 and p.done_bytes > p.total_bytes:
        v.append(("progress.done_bytes", f"{p.done_bytes} is more than total_bytes ({p.total_bytes})"))
    if not math.isfinite(p.bytes_per_second) or p.bytes_per_second < 0:
        v.append(("progress.bytes_per_second", f"{p.bytes_per_second} is not a rate; give bytes per second, 0 or more"))
    if v:
        raise errors.InvalidArgument(v)


# Statements built once (their compiled form is cached by SQLAlchemy): values travel as parameters.
_INSERT_WORKSPACE = WorkspaceRow.__table__.insert().returning(WorkspaceRow.__table__.c.id)
_INSERT_EVENT = EventRow.__table__.insert()


@functools.lru_cache(maxsize=64)
def _update_workspace(columns: tuple[str, ...]):
    t = WorkspaceRow.__table__
    return t.update().where(t.c.id == sa.bindparam("row_id")).values(
        {c: sa.bindparam(c) for c in columns})


@functools.lru_cache(maxsize=8)
def _select_held(columns: tuple[sa.Column, ...]):
    t = WorkspaceRow.__table__
    return sa.select(t.c.id, t.c.manager_name, t.c.state, t.c.state_time, t.c.snapshot, *columns).where(
        t.c.name == sa.bindparam("name")).with_for_update()


def _held_row(conn, name: str, manager: str, *columns):
    """The workspace's row, locked, with the columns a manager's report needs; NOT_FOUND when it
    does not exist, FAILED_PRECONDITION when another manager (or none) holds it."""
    r = conn.execute(_select_held(columns), {"name": name}).first()
    if r is None:
        raise errors.NotFound(f"workspace {name} does not exist")
    if r.manager_name != manager:
        held = f"held by {r.manager_name}" if r.manager_name else "not placed on any manager"
        raise errors.FailedPrecondition(f"{manager} may not report on {name}: it is {held}")
    return r


class _Retried(Exception):
    """A create refused for its quota that repeats one already recorded: answered with that record."""
    def __init__(self, workspace: model.Workspace):
        self.workspace = workspace


class Records:
    def __init__(self, uow: UnitOfWork, access: AccessStore, policy: PolicyFile | None,
                 changed: Callable[[str], None], retries: DestroyRetries,
                 clock: Callable[[], dt.datetime] = model.utcnow):
        """`policy`: the site's, when the repository runs with authentication; `changed(name)`:
        called after each commit that changed a workspace."""
        self.uow, self.access, self.policy, self.changed = uow, access, policy, changed
        self.retries, self.clock = retries, clock

    def create_record(self, request_id: str, workspace: model.Workspace, source: str = "factory",
                      caller: Caller = PLAIN_TEXT_CALLER) -> tuple[model.Workspace, bool]:
        record, _, created = self._create(request_id, workspace, source, caller)
        return record, created

    def create_record_wire(self, request_id: str, workspace: model.Workspace, source: str = "factory",
                           caller: Caller = PLAIN_TEXT_CALLER) -> tuple[workspace_pb2.Workspace, bool]:
        """create_record, answered with the record's wire message as stored (what
        CreateWorkspaceRecord sends back, without converting it again)."""
        record, wire, created = self._create(request_id, workspace, source, caller)
        return (wire if wire is not None else converters.workspace_to_pb(record)), created

    def _create(self, request_id: str, workspace: model.Workspace, source: str, caller: Caller
                ) -> tuple[model.Workspace, workspace_pb2.Workspace | None, bool]:
        """A new PENDING record (event CREATED), owned by `caller`. Idempotent on request_id: the
        same request again returns the first record and False; a different request under the
        same id is ALREADY_EXISTS. The site's policy decides on it for the caller (kinds, limits,
        and their quota group's holdings, counted in the same transaction as the insert)."""
        names.parse_workspace_name(workspace.name, "workspace.name")
        if workspace.termination_time is None:
            raise errors.InvalidArgument("is missing; the factory sets it from the lifetime",
                                         "workspace.termination_time")
        if workspace.spec is None or workspace.spec.kind is None:
            raise errors.InvalidArgument("is missing", "workspace.spec.kind")
        digest = request_digest(workspace)
        # No look-up first: the unique request id answers a retry (IntegrityError below), and a
        # first request, the common case, costs one transaction.
        placed = workspace.endpoint
        if placed.manager:
            # The factory's first choice of manager, recorded in the same transaction.
            names.parse_manager_name(placed.manager, "workspace.endpoint.manager")
            if not placed.manager_address:
                raise errors.InvalidArgument("is empty; give the manager's host:port",
                                             "workspace.endpoint.manager_address")
        now = self.clock()
        owner = caller.identity if caller.principal is not None else workspace.owner
        store.check_owner(owner, " (the identity of your credentials)" if caller.principal is not None else "")
        result = model.Workspace(
            name=workspace.name, spec=workspace.spec, state=State.PENDING, state_message="accepted; not yet placed",
            endpoint=model.Endpoint(workspace.name, placed.manager, placed.manager_address) if placed.manager
            else model.Endpoint(), owner=owner, create_time=now, update_time=now,
            termination_time=workspace.termination_time, labels=dict(workspace.labels), request_id=request_id)
        events = [(EventType.CREATED, State.UNSPECIFIED, "recorded")]
        if placed.manager:
            events.append((EventType.PLACED, State.PENDING, f"placed on {placed.manager} ({placed.manager_address})"))
        try:
            # Plain statements rather than the ORM's unit of work: every create passes here.
            with self.uow(write=True) as session:
                conn = session.connection()
                decision = self._decide(session, caller, workspace, request_id, digest, now)
                if decision is not None:
                    c = decision.customisation
                    result.customisation = model.Customisation(decision.rule, decision.quota_group, c.account_pool,
                                                               c.unix_group, dict(c.environment), c.image)
                wire = converters.workspace_to_pb(result)
                wid = conn.execute(_INSERT_WORKSPACE, dict(
                    name=workspace.name, spec=store.spec_to_json(workspace.spec), state=State.PENDING.value,
                    state_message=result.state_message, state_time=now, owner=owner,
                    quota_group=decision.quota_group if decision else "",
                    customisation=store.customisation_to_json(result.customisation),
                    manager_name=placed.manager or None, manager_address=placed.manager_address if placed.manager
                    else "", host_identity="", labels=dict(workspace.labels), request_id=request_id or None,
                    request_digest=digest, create_time=now, update_time=now,
                    termination_time=workspace.termination_time, destroy_reason="", event_seq=len(events),
                    snapshot=wire.SerializeToString(deterministic=True),
                    enforcement=None)).scalar_one()
                if workspace.labels:
                    conn.execute(WorkspaceLabelRow.__table__.insert(),
                                 [{"workspace_id": wid, "key": k, "value": v} for k, v in workspace.labels.items()])
                conn.execute(_INSERT_EVENT, [
                    {"workspace_id": wid, "seq": seq, "time": now, "type": kind.value, "previous_state": before.value,
                     "state": State.PENDING.value, "message": text, "source": source}
                    for seq, (kind, before, text) in enumerate(events, 1)])
        except _Retried as retried:
            return retried.workspace, None, False
        except sa.exc.IntegrityError:
            # A concurrent create with the same request id (or name) won the race.
            existing = self._by_request_id(request_id, digest) if request_id else None
            if existing is not None:
                return existing, None, False
            raise errors.AlreadyExists(f"workspace {workspace.name} already exists") from None
        self.access.note_owner(result.name, owner)
        self.changed(result.name)
        return result, wire, True

    def _decide(self, session, caller: Caller, workspace: model.Workspace, request_id: str, digest: str,
                now: dt.datetime) -> Decision | None:
        """The policy's decision for a verified caller (None for a plain-text one), with their
        quota group's holdings read in this transaction; raises when it refuses. A retry of a
        request already recorded is answered with its record instead (_Retried)."""
        if caller.principal is None or self.policy is None:
            return None
        request = WorkspaceRequest.from_spec(workspace.spec, pooled=self._leased_from_pool(session, workspace))
        first = self.policy.decide(caller.principal, request)
        if first.reasons:
            first.raise_if_refused()
        if session.bind.dialect.name == "postgresql":  # one create at a time per quota group
            session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:g))"), {"g": first.quota_group})
        usage = group_usage(session, first.quota_group, now)
        decision = self.policy.decide(caller.principal, request, usage)
        if decision.exceeded and request_id:
            row = store.get_by_request_id(session, request_id)
            if row is not None and row.request_digest == digest:
                raise _Retried(store.to_workspace(row))
        decision.raise_if_refused()
        return decision

    @staticmethod
    def _leased_from_pool(session, workspace: model.Workspace) -> bool:
        """Whether its account comes from a pool: the manager it is placed on leases from one."""
        placed = workspace.endpoint.manager
        if not placed or not kinds.of(workspace.spec.kind).pooled_name:
            return False
        return bool(store.account_pool_of(session, placed))

    def _by_request_id(self, request_id: str, digest: str) -> model.Workspace | None:
        with self.uow() as session:
            row = store.get_by_request_id(session, request_id)
            if row is None:
                return None
            if row.request_digest != digest:
                raise errors.AlreadyExists(
                    f"request_id {request_id!r} was already used for a different request (workspace {row.name}); "
                    "use a new request id for a new workspace, or repeat the first request exactly")
            return store.to_workspace(row)

    def assign(self, name: str, endpoint: model.Endpoint, source: str = "factory") -> model.Workspace:
        """Records which manager holds the workspace (event PLACED)."""
        names.parse_manager_name(endpoint.manager, "endpoint.manager")
        if not endpoint.manager_address:
            raise errors.InvalidArgument("is empty; give the manager's host:port", "endpoint.manager_address")
        with self.uow(write=True) as session:
            row = store.load(session, name, for_update=True)
            if row.state in (State.TERMINATING.value, State.TERMINATED.value):
                raise errors.FailedPrecondition(f"cannot place {name}: it is {row.state}")
            if row.manager_name == endpoint.manager and row.manager_address == endpoint.manager_address:
                return store.to_workspace(row)  # a retry
            if row.manager_name and row.state not in (State.PENDING.value, State.PROPAGATING.value):
                # Its manager made it (a deploy whose answer was lost): a second would make it twice.
                raise errors.FailedPrecondition(f"{name} is {row.state} on {row.manager_name}, which made it; it is "
                                                "not placed on another manager")
            now = self.clock()
            row.manager_name, row.manager_address = endpoint.manager, endpoint.manager_address
            if endpoint.host_identity:
                row.host_identity = endpoint.host_identity
            row.update_time = now
            store.add_event(session, row, EventType.PLACED, row.state, row.state,
                            f"placed on {endpoint.manager} ({endpoint.manager_address})", source, now)
            result = store.to_workspace(row)
        self.changed(name)
        return result

    def move(self, name: str, source: str, endpoint: model.Endpoint, message: str = "") -> model.Workspace:
        """The destination of a migration takes hold of a MIGRATING workspace from source, the
        manager holding it (event MIGRATED, source and destination in its message). A retry by
        the new holder returns the record unchanged."""
        names.parse_manager_name(source, "source")
        names.parse_manager_name(endpoint.manager, "endpoint.manager")
        if not endpoint.manager_address:
            raise errors.InvalidArgument("is empty; give the destination's host:port", "endpoint.manager_address")
        if endpoint.manager == source:
            raise errors.InvalidArgument(f"is the source {source}; a migration moves to another manager",
                                         "endpoint.manager")
        with self.uow(write=True) as session:
            row = store.load(session, name, for_update=True)
            if row.manager_name == endpoint.manager and row.manager_address == endpoint.manager_address:
                return store.to_workspace(row)  # a retry
            if row.manager_name != source:
                raise errors.FailedPrecondition(f"{name} is held by {row.manager_name or 'no manager'}, "
                                                f"not by {source}; it cannot move from there")
            if row.state != State.MIGRATING.value:
                raise errors.FailedPrecondition(f"cannot move {name}: it is {row.state}; only a MIGRATING "
                                                "workspace moves (ManagerService.MigrateWorkspace)")
            now = self.clock()
            row.manager_name, row.manager_address = endpoint.manager, endpoint.manager_address
            if endpoint.host_identity:
                row.host_identity = endpoint.host_identity
            row.update_time = now
            text = f"migrated from {source} to {endpoint.manager} ({endpoint.manager_address})"
            store.add_event(session, row, EventType.MIGRATED, row.state, row.state,
                            text + (f": {message}" if message else ""), endpoint.manager, now)
            result = store.to_workspace(row)
        self.changed(name)
        return result

    def report_state(self, name: str, manager: str, state: State, message: str = "",
                     change_time: dt.datetime | None = None, host_identity: str = "",
                     event_type: EventType = EventType.STATE_CHANGED,
                     enforcement: model.Enforcement | None = None) -> model.Workspace:
        return converters.workspace_from_pb(self.report_state_wire(name, manager, state, message, change_time,
                                                                   host_identity, event_type, enforcement))

    def report_state_wire(self, name: str, manager: str, state: State, message: str = "",
                          change_time: dt.datetime | None = None, host_identity: str = "",
                          event_type: EventType = EventType.STATE_CHANGED,
                          enforcement: model.Enforcement | None = None) -> workspace_pb2.Workspace:
        """A manager reports a change it made; the workspace's wire message as stored after it
        (what ReportWorkspaceState sends back, without converting it). Only the holding manager may; a report older than
        the last applied change is kept in the history but does not move the state; a
        TERMINATED record stays TERMINATED."""
        names.parse_manager_name(manager, "manager")
        if state in (State.UNSPECIFIED,):
            raise errors.InvalidArgument("is unspecified; report the state the workspace is in now", "state")
        if event_type is EventType.UNSPECIFIED:
            event_type = EventType.STATE_CHANGED
        names.parse_workspace_name(name)
        now = self.clock()
        change_time = change_time or now
        t = WorkspaceRow.__table__
        # Every manager report passes here (each create ends with one): plain statements on the
        # session's connection, and the wire snapshot edited in place, instead of the ORM's unit
        # of work. test_the_stored_snapshot_always_matches_the_row keeps the two in step.
        with self.uow(write=True) as session:
            conn = session.connection()
            r = _held_row(conn, name, manager, t.c.event_seq)
            current = State(r.state)
            stale = change_time < r.state_time
            if current is State.TERMINATING and state is State.TERMINATED:
                stale = False  # the destroy it was asked for is done: never stale
            why = ""
            if current is State.TERMINATED:
                why = " (ignored: the workspace is TERMINATED)"
            elif current is State.TERMINATING and state not in (State.TERMINATING, State.TERMINATED):
                why = " (ignored: the workspace is being destroyed)"
            elif stale:
                why = " (ignored: older than the last recorded change)"
            wire = workspace_pb2.Workspace.FromString(r.snapshot)
            seq = (r.event_seq or 0) + 1
            values: dict = {"update_time": now, "event_seq": seq}
            if host_identity:
                values["host_identity"] = wire.endpoint.host_identity = host_identity
            if enforcement is not None:
                values["enforcement"] = dataclasses.asdict(enforcement)
                wire.enforcement.CopyFrom(converters.enforcement_to_pb(enforcement))
            if not why:
                values.update(state=state.value, state_message=message, state_time=change_time)
                wire.state, wire.state_message = converters.state_to_pb(state), message
                if state is not current:
                    # Progress belongs to the state it was reported in.
                    values["progress"] = None
                    wire.ClearField("progress")
                if state is State.TERMINATED:
                    values["destroy_reason"] = ""
            wire.update_time.CopyFrom(converters.ts_to_pb(now))
            values["snapshot"] = wire.SerializeToString(deterministic=True)
            conn.execute(_update_workspace(tuple(sorted(values))), {**values, "row_id": r.id})
            conn.execute(_INSERT_EVENT, dict(
                workspace_id=r.id, seq=seq, time=now, type=event_type.value, previous_state=current.value,
                state=state.value, message=message + why, source=manager))
        if state is State.TERMINATED:
            self.retries.forget(name)
        self.changed(name)
        return wire

    def report_progress(self, name: str, manager: str, progress: model.Progress | None) -> bool:
        """A manager reports how far the work of a workspace's current state has got. Only the
        holding manager may. It changes the workspace's progress and nothing else: no event, no
        update_time. None or an empty Progress clears it. A report on a workspace being destroyed
        or destroyed, or one older than the last state change (it was about an earlier state), is
        ignored: False."""
        names.parse_manager_name(manager, "manager")
        names.parse_workspace_name(name)
        if progress is not None and progress == model.Progress(update_time=progress.update_time):
            progress = None  # empty: no activity
        if progress is not None:
            check_progress(progress)
        t = WorkspaceRow.__table__
        with self.uow(write=True) as session:
            conn = session.connection()
            r = _held_row(conn, name, manager, t.c.progress)
            if r.state in (State.TERMINATING.value, State.TERMINATED.value):
                return False
            if progress is not None:
                if progress.update_time is None:
                    progress = dataclasses.replace(progress, update_time=self.clock())
                if progress.update_time < r.state_time:
                    return False
            if progress is None and r.progress is None:
                return True  # nothing to clear
            wire = workspace_pb2.Workspace.FromString(r.snapshot)
            if progress is None:
                wire.ClearField("progress")
            else:
                wire.progress.CopyFrom(converters.progress_to_pb(progress))
            conn.execute(_update_workspace(("progress", "snapshot")), {
                "progress": store.progress_to_json(progress),
                "snapshot": wire.SerializeToString(deterministic=True), "row_id": r.id})
        self.changed(name)
        return True

    def delete_record(self, name: str, reason: str = "") -> None:
        """Removes the record and history of a creation that failed before the workspace was
        realised: PENDING, or PROPAGATING when its image copy failed."""
        with self.uow(write=True) as session:
            row = store.load(session, name, for_update=True)
            if row.state not in (State.PENDING.value, State.PROPAGATING.value):
                raise errors.FailedPrecondition(
                    f"cannot remove the record of {name}: it is {row.state}; only PENDING or PROPAGATING records "
                    "may be removed, delete the workspace instead")
            session.delete(row)
        log.info("record %s removed: %s", name, reason or "no reason given")
        self.changed(name)
