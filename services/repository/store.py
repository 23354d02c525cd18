"""Rows to domain objects and back, and the queries the service layer runs. Everything here
works inside a session the caller's unit of work owns."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from ..common import converters, errors, model, names
from .db import NOT_TERMINATED, OWNER_WIDTH, EventRow, ManagerRow, WorkspaceLabelRow, WorkspaceRow

# ----------------------------------------------------------------------------- conversions


def spec_to_json(spec: model.WorkspaceSpec) -> dict[str, Any]:
    sw, r = spec.software, spec.resources
    return {
        "kind": spec.kind.value if spec.kind else None,
        "software": {
            "environment": dict(sw.environment), "setup_script": sw.setup_script, "image": sw.image,
            "unix_group": sw.unix_group,
            "files": [{"path": f.path, "content": base64.b64encode(f.content).decode(), "mode": f.mode}
                      for f in sw.files],
        },
        "resources": dataclasses.asdict(r),
        "lifetime": spec.lifetime.total_seconds() if spec.lifetime is not None else None,
        "start_on_create": spec.start_on_create,
    }


def spec_from_json(doc: dict[str, Any]) -> model.WorkspaceSpec:
    sw, r = doc.get("software") or {}, doc.get("resources") or {}
    return model.WorkspaceSpec(
        kind=model.Kind(doc["kind"]) if doc.get("kind") else None,
        software=model.Software(
            environment=dict(sw.get("environment") or {}), setup_script=sw.get("setup_script", ""),
            files=[model.StagedFile(f["path"], base64.b64decode(f.get("content", "")), f.get("mode", 0o644))
                   for f in sw.get("files") or []],
            image=sw.get("image", ""), unix_group=sw.get("unix_group", "")),
        resources=model.Resources(**{f.name: r.get(f.name, 0) for f in dataclasses.fields(model.Resources)}),
        lifetime=dt.timedelta(seconds=doc["lifetime"]) if doc.get("lifetime") is not None else None,
        start_on_create=doc.get("start_on_create", True),
    )


def to_workspace(row: WorkspaceRow) -> model.Workspace:
    return model.Workspace(
        name=row.name, spec=spec_from_json(row.spec), state=model.State(row.state),
        state_message=row.state_message,
        endpoint=model.Endpoint(row.name, row.manager_name or "", row.manager_address, row.host_identity)
        if row.manager_name else model.Endpoint(),
        owner=row.owner, create_time=row.create_time, update_time=row.update_time,
        termination_time=row.termination_time, labels=dict(row.labels or {}), request_id=row.request_id or "",
        enforcement=model.Enforcement(**row.enforcement) if row.enforcement else None,
        progress=progress_from_json(row.progress),
        customisation=customisation_from_json(row.customisation))


def customisation_to_json(c: model.Customisation | None) -> dict[str, Any] | None:
    return dataclasses.asdict(c) if c is not None else None


def customisation_from_json(doc: dict[str, Any] | None) -> model.Customisation | None:
    if not doc:
        return None
    known = {f.name for f in dataclasses.fields(model.Customisation)}
    return model.Customisation(**{k: v for k, v in doc.items() if k in known})


def progress_to_json(p: model.Progress | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"activity": p.activity, "done_bytes": p.done_bytes, "total_bytes": p.total_bytes,
            "bytes_per_second": p.bytes_per_second,
            "update_time": p.update_time.astimezone(dt.timezone.utc).isoformat() if p.update_time else None}


def progress_from_json(doc: dict[str, Any] | None) -> model.Progress | None:
    if not doc:
        return None
    when = doc.get("update_time")
    return model.Progress(doc.get("activity", ""), int(doc.get("done_bytes", 0)), int(doc.get("total_bytes", 0)),
                          float(doc.get("bytes_per_second", 0.0)),
                          dt.datetime.fromisoformat(when) if when else None)


def to_event(workspace_name: str, row: EventRow) -> model.Event:
    return model.Event(name=f"{workspace_name}/events/{row.seq}", type=model.EventType(row.type), time=row.time,
                       previous_state=model.State(row.previous_state), state=model.State(row.state),
                       message=row.message, source=row.source)


def _capacity_json(c: model.Capacity) -> dict[str, int]:
    return {"workspaces": c.workspaces, "memory_bytes": c.memory_bytes, "disk_bytes": c.disk_bytes,
            "cpu_millis": c.cpu_millis}


def _capacity(doc: dict[str, int] | None) -> model.Capacity:
    doc = doc or {}
    return model.Capacity(doc.get("workspaces", 0), doc.get("memory_bytes", 0), doc.get("disk_bytes", 0),
                          doc.get("cpu_millis", 0))


def to_manager(row: ManagerRow, now: dt.datetime, timeout: dt.timedelta) -> model.ManagerInfo:
    alive = now - row.heartbeat_time <= timeout
    return model.ManagerInfo(
        name=row.name, address=row.address, kinds=[model.Kind(k) for k in row.kinds], backend=row.backend,
        capacity=_capacity(row.capacity), allocated=_capacity(row.allocated),
        state=model.ManagerState.AVAILABLE if alive else model.ManagerState.UNREACHABLE,
        register_time=row.register_time, heartbeat_time=row.heartbeat_time,
        heartbeat_interval=dt.timedelta(seconds=row.heartbeat_interval), account_pool=row.account_pool,
        identity=row.identity or "")


# ----------------------------------------------------------------------------- workspaces


def get_row(session: Session, name: str, for_update: bool = False) -> WorkspaceRow | None:
    query = sa.select(WorkspaceRow).where(WorkspaceRow.name == name)
    if for_update:
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def load(session: Session, name: str, field: str = "name", for_update: bool = False) -> WorkspaceRow:
    """The workspace's row: INVALID_ARGUMENT on `field` for a malformed name, NOT_FOUND when none."""
    names.parse_workspace_name(name, field)
    row = get_row(session, name, for_update)
    if row is None:
        raise errors.NotFound(f"workspace {name} does not exist")
    return row


def move(session: Session, row: WorkspaceRow, state: model.State, message: str, source: str, now: dt.datetime) -> None:
    """Puts the row in `state`, with its event (STATE_CHANGED)."""
    previous = row.state
    if previous != state.value:
        row.progress = None  # progress belongs to the state it was reported in
    row.state, row.state_message, row.state_time, row.update_time = state.value, message, now, now
    add_event(session, row, model.EventType.STATE_CHANGED, previous, state, message, source, now)


def owner_too_long(owner: str, whose: str = "") -> str:
    """What is wrong with an owner longer than the column holds, or ''."""
    if len(owner) <= OWNER_WIDTH:
        return ""
    return f"is {len(owner)} characters long{whose}; an owner has at most {OWNER_WIDTH}"


def check_owner(owner: str, whose: str = "") -> None:
    if problem := owner_too_long(owner, whose):
        raise errors.InvalidArgument(problem, "owner")


_SNAPSHOT_SQL = {"sqlite": "SELECT snapshot FROM workspaces WHERE name = ?",
                 "postgresql": "SELECT snapshot FROM workspaces WHERE name = %s"}
# A workspace's owner, its wire message and its role bindings (one row each, or one row of nulls).
_ACCESS_SQL = ("SELECT w.owner, w.snapshot, b.member, b.role FROM workspaces AS w "
               "LEFT OUTER JOIN role_bindings AS b ON b.workspace = w.name WHERE w.name = ")
_ACCESS_SQL = {"sqlite": _ACCESS_SQL + "?", "postgresql": _ACCESS_SQL + "%s"}


def snapshot_of(row: WorkspaceRow) -> bytes:
    return converters.workspace_to_pb(to_workspace(row)).SerializeToString(deterministic=True)


@event.listens_for(Session, "before_flush")
def _note_changed_workspaces(session: Session, flush_context, instances) -> None:
    changed = session.info.setdefault("vws_changed", set())
    changed.update(o for o in list(session.new) + list(session.dirty) if isinstance(o, WorkspaceRow))


@event.listens_for(Session, "before_commit")
def _refresh_snapshots(session: Session) -> None:
    """Once per transaction, before its last flush: every workspace row it changed gets its
    snapshot rewritten from what the row now holds."""
    changed = session.info.pop("vws_changed", set())
    changed.update(o for o in list(session.new) + list(session.dirty) if isinstance(o, WorkspaceRow))
    for row in changed:
        if row not in session.deleted:
            row.snapshot = snapshot_of(row)


@event.listens_for(Session, "after_rollback")
def _forget_changed(session: Session) -> None:
    session.info.pop("vws_changed", None)


def _point_rows(dbapi_connection, sql: str, name: str) -> list[tuple]:
    """One statement on the unique index of name, straight on the DBAPI connection."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(sql, (name,))
        return cursor.fetchall()
    finally:
        cursor.close()


def read_snapshot(dbapi_connection, dialect: str, name: str) -> bytes | None:
    """The fast path of GetWorkspace: the stored wire message, or None."""
    rows = _point_rows(dbapi_connection, _SNAPSHOT_SQL[dialect], name)
    return bytes(rows[0][0]) if rows else None


def read_access(dbapi_connection, dialect: str, name: str) -> tuple[str, bytes, list[tuple[str, str]]] | None:
    """A user's Get in one statement: the workspace's owner, its stored wire message and its
    role bindings as (member, role) pairs; None when it does not exist."""
    rows = _point_rows(dbapi_connection, _ACCESS_SQL[dialect], name)
    if not rows:
        return None
    return rows[0][0], bytes(rows[0][1]), [(member, role) for _, _, member, role in rows if member is not None]


def get_by_request_id(session: Session, request_id: str) -> WorkspaceRow | None:
    return session.execute(sa.select(WorkspaceRow).where(WorkspaceRow.request_id == request_id)).scalar_one_or_none()


def set_labels(session: Session, row: WorkspaceRow, labels: dict[str, str]) -> None:
    session.add_all(WorkspaceLabelRow(workspace_id=row.id, key=k, value=v) for k, v in labels.items())


def add_event(session: Session, row: WorkspaceRow, type: model.EventType, previous: model.State | str,
              state: model.State | str, message: str, source: str, time: dt.datetime) -> EventRow:
    row.event_seq = seq = (row.event_seq or 0) + 1
    ev = EventRow(workspace_id=row.id, seq=seq, time=time, type=type.value,
                  previous_state=getattr(previous, "value", previous), state=getattr(state, "value", state),
                  message=message, source=source)
    session.add(ev)
    return ev


def list_rows(session: Session, *, states: Iterable[model.State], owner: str, labels: dict[str, str],
              manager: str, after: tuple[dt.datetime, int] | None, limit: int,
              visible: sa.ColumnElement | None = None) -> list[WorkspaceRow]:
    """Newest first, keyset-paged on (create_time, id); `visible`: only the rows it allows."""
    w = WorkspaceRow
    query = sa.select(w)
    if visible is not None:
        query = query.where(visible)
    states = list(states)
    if states:
        query = query.where(w.state.in_([s.value for s in states]) if len(states) > 1
                            else w.state == states[0].value)
    else:
        # Literal, so that the planner may use the partial index made with the same predicate.
        query = query.where(sa.text(NOT_TERMINATED))
    if owner:
        query = query.where(w.owner == owner)
    if manager:
        query = query.where(w.manager_name == manager)
    for key, value in sorted(labels.items()):
        query = query.where(sa.exists().where(WorkspaceLabelRow.workspace_id == w.id,
                                              WorkspaceLabelRow.key == key, WorkspaceLabelRow.value == value))
    if after is not None:
        query = query.where(sa.tuple_(w.create_time, w.id) < sa.tuple_(sa.literal(after[0], type_=w.create_time.type),
                                                                         sa.literal(after[1])))
    query = query.order_by(w.create_time.desc(), w.id.desc()).limit(limit)
    return list(session.execute(query).scalars())


def expired_names(session: Session, now: dt.datetime, limit: int) -> list[str]:
    w = WorkspaceRow
    return list(session.execute(
        sa.select(w.name).where(sa.text(NOT_TERMINATED), w.state != model.State.TERMINATING.value,
                                w.termination_time <= now).order_by(w.termination_time).limit(limit)).scalars())


def unfinished_destroys(session: Session, limit: int) -> list[str]:
    w = WorkspaceRow
    return list(session.execute(
        sa.select(w.name).where(w.state == model.State.TERMINATING.value, w.destroy_reason != "")
        .order_by(w.update_time).limit(limit)).scalars())


def list_events(session: Session, workspace_id: int, after_seq: int, limit: int) -> list[EventRow]:
    return list(session.execute(
        sa.select(EventRow).where(EventRow.workspace_id == workspace_id, EventRow.seq > after_seq)
        .order_by(EventRow.seq).limit(limit)).scalars())


# ----------------------------------------------------------------------------- managers


def upsert_manager(session: Session, info: model.ManagerInfo, now: dt.datetime) -> ManagerRow:
    row = session.get(ManagerRow, info.name, with_for_update=True)
    if row is None:
        row = ManagerRow(name=info.name, register_time=now)
        session.add(row)
    row.address = info.address
    row.kinds = [k.value for k in info.kinds]
    row.backend = info.backend
    row.account_pool = info.account_pool
    row.capacity = _capacity_json(info.capacity)
    row.allocated = _capacity_json(info.allocated)
    row.register_time = now
    row.heartbeat_time = now
    row.heartbeat_interval = info.heartbeat_interval.total_seconds()
    return row


def heartbeat_manager(session: Session, name: str, allocated: model.Capacity, now: dt.datetime) -> ManagerRow | None:
    row = session.get(ManagerRow, name, with_for_update=True)
    if row is not None:
        row.allocated = _capacity_json(allocated)
        row.heartbeat_time = now
    return row


def list_managers(session: Session, after: str, limit: int) -> list[ManagerRow]:
    return list(session.execute(sa.select(ManagerRow).where(ManagerRow.name > after)
                                .order_by(ManagerRow.name).limit(limit)).scalars())


_ACCOUNT_POOL_OF = sa.select(ManagerRow.account_pool).where(ManagerRow.name == sa.bindparam("manager"))


def account_pool_of(session: Session, manager: str) -> str:
    """The account pool a manager leases from; "" for none, or for a manager never registered."""
    return session.connection().execute(_ACCOUNT_POOL_OF, {"manager": manager}).scalar_one_or_none() or ""


def manager_address(session: Session, name: str) -> str | None:
    return session.execute(sa.select(ManagerRow.address).where(ManagerRow.name == name)).scalar_one_or_none()
