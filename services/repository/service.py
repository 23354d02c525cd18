"""The repository's service layer: the system of record's rules. Servicers only convert
messages and call these methods; every method takes and returns domain objects and raises
vws.common.errors."""
from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import threading
import time
from typing import Callable, Iterator

import sqlalchemy as sa

from ..common import converters, errors, model, names
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from .policy import Decision, PolicyFile, WorkspaceRequest
from ..common.config import RepositorySettings
from ..common.model import EventType, State
from . import access as access_store
from . import images as image_store
from . import store
from . import usage as usage_store
from .db import OWNER_WIDTH, EventRow, ManagerRow, UnitOfWork, WorkspaceLabelRow, WorkspaceRow
from .gateway import ManagerGateway
from .paging import (checked_page_size, decode_token, encode_token, fingerprint, name_after,
                                   sequence_after)
from .watch import WatchHub
from ..v1 import workspace_pb2

log = logging.getLogger("vws.repository")

SOURCE = "repository"
LIFETIME_ENDED = "lifetime ended"


def _check_progress(p: model.Progress) -> None:
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


MAX_KERNEL_ARGS = 4096
MAX_DESCRIPTION = 1024
_BOOT_FILES = {  # boot -> (roles it needs exactly once, roles it may have once)
    model.ImageBoot.KERNEL: ({model.FileRole.KERNEL}, {model.FileRole.INITRD}),
    model.ImageBoot.DISK: ({model.FileRole.DISK}, set()),
}


def _owner_too_long(owner: str, whose: str = "") -> str:
    """What is wrong with an owner longer than the column holds, or ''."""
    if len(owner) <= OWNER_WIDTH:
        return ""
    return f"is {len(owner)} characters long{whose}; an owner has at most {OWNER_WIDTH}"


def _check_owner(owner: str, whose: str = "") -> None:
    if problem := _owner_too_long(owner, whose):
        raise errors.InvalidArgument(problem, "owner")


def _checked_image(image_id: str, image: model.Image, owner: str) -> model.Image:
    """Every field of a CreateImage request checked, all violations in one answer; returns the
    image to make (name set, visibility defaulted, each file's format known, its location the
    source path and its digest the expected one, if any)."""
    v: list[tuple[str, str]] = []
    try:
        iid = names.parse_image_name(image_id, "image_id")
    except errors.InvalidArgument as exc:
        v += exc.violations
        iid = ""
    if not owner:
        v.append(("owner", "is empty; give who adds the image (the CLI sends your user name)"))
    elif problem := _owner_too_long(owner):
        v.append(("owner", problem))
    boot = image.boot
    if boot not in _BOOT_FILES:
        v.append(("image.boot", "is unspecified; give BOOT_KERNEL (a kernel and an initrd) or BOOT_DISK (a disk)"))
    visibility = image.visibility
    if visibility is model.ImageVisibility.UNSPECIFIED:
        visibility = model.ImageVisibility.PRIVATE
    if image.kernel_args:
        if boot is model.ImageBoot.DISK:
            v.append(("image.kernel_args", "only an image booted from a kernel (BOOT_KERNEL) takes kernel arguments; "
                      "a disk boots with its own boot loader's; leave it empty"))
        elif len(image.kernel_args) > MAX_KERNEL_ARGS or any(c in image.kernel_args for c in "\0\n\r"):
            v.append(("image.kernel_args", f"must be one line of at most {MAX_KERNEL_ARGS} characters"))
    if len(image.description) > MAX_DESCRIPTION or "\0" in image.description:
        v.append(("image.description", f"must be at most {MAX_DESCRIPTION} characters without NUL"))

    files: list[model.ImageFile] = []
    seen: dict[model.FileRole, int] = {}
    for i, f in enumerate(image.files):
        path = f"image.files[{i}]"
        if f.role is model.FileRole.UNSPECIFIED:
            v.append((path + ".role", "is unspecified; give ROLE_KERNEL, ROLE_INITRD or ROLE_DISK"))
            continue
        if boot in _BOOT_FILES:
            needed, optional = _BOOT_FILES[boot]
            if f.role not in needed | optional:
                v.append((path + ".role", f"a {boot.value} image has no {f.role.value} file; give "
                          + ("a KERNEL and optionally an INITRD" if boot is model.ImageBoot.KERNEL else "one DISK")))
                continue
        if f.role in seen:
            v.append((path + ".role", f"{f.role.value} is given twice (also files[{seen[f.role]}]); give it once"))
            continue
        seen[f.role] = i
        digest = f.digest.strip().lower()
        if digest and not image_store.DIGEST.match(digest):
            v.append((path + ".digest", f"{f.digest[:80]!r} is not a digest; give blake3-4m:<64 hex digits> "
                      "(what `vws image show` prints), or leave it empty"))
        try:
            _, actual = image_store.check_source(f.location)
        except image_store.SourceError as exc:
            v.append((path + ".location", str(exc)))
            continue
        declared = f.format
        if f.role is model.FileRole.DISK:
            if declared is model.FileFormat.UNSPECIFIED:
                declared = actual
            elif declared is not actual:
                v.append((path + ".format", f"{f.location} is {actual.value.lower()}"
                          + (" (it starts with the qcow2 magic QFI\\xfb)" if actual is model.FileFormat.QCOW2
                             else " (no qcow2 header)")
                          + f", not {declared.value.lower()} as given; give FORMAT_{actual.value}"))
                continue
        else:
            if declared is model.FileFormat.UNSPECIFIED:
                declared = model.FileFormat.RAW
            if declared is not model.FileFormat.RAW:
                v.append((path + ".format", f"a {f.role.value.lower()} is loaded as it is: give FORMAT_RAW or none"))
                continue
            if actual is model.FileFormat.QCOW2:
                v.append((path + ".location", f"{f.location} is a qcow2 disk image, not a {f.role.value.lower()}"))
                continue
        files.append(model.ImageFile(f.role, declared, 0, digest, f.location))
    if boot in _BOOT_FILES:
        for role in sorted(_BOOT_FILES[boot][0] - set(seen), key=lambda r: r.value):
            v.append(("image.files", f"has no {role.value} file; a {boot.value} image needs one"
                      + (" (and optionally an INITRD)" if boot is model.ImageBoot.KERNEL else "")))
    if v:
        raise errors.InvalidArgument(v)
    files.sort(key=lambda f: image_store.ROLE_ORDER[f.role])
    return model.Image(name=names.image_name(iid), boot=boot, files=files, owner=owner, visibility=visibility,
                       kernel_args=image.kernel_args if boot is model.ImageBoot.KERNEL else "",
                       description=image.description, guest_agent=image.guest_agent)


def _copy(source: str, target: pathlib.Path, expected: str, index: int):
    """copysum.copy_file, its failures as domain errors naming the field."""
    from vws.native import copysum
    try:
        return copysum.copy_file(source, str(target), expected=expected or None, fsync=True)
    except copysum.DigestMismatch as exc:
        want = getattr(exc, "expected", None) or expected
        got = getattr(exc, "actual", None) or (exc.args[1] if len(exc.args) > 1 else "?")
        raise errors.InvalidArgument(
            f"{source} has digest {got}, not {want} as given; check that it is the file you meant "
            "(or leave the digest out)", f"image.files[{index}].digest") from None
    except OSError as exc:
        if not os.path.isfile(source):
            raise errors.InvalidArgument(f"{source} disappeared while it was copied",
                                         f"image.files[{index}].location") from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.ResourceExhausted(f"the image store {target.parent.parent} has no room for {source}: "
                                           f"{exc.strerror}; free some space or move image_store") from None
        raise errors.Internal(f"copying {source} into the image store failed: {exc.strerror}") from None


def request_digest(workspace: model.Workspace) -> str:
    """What makes two creates with one request id the same request: the spec, owner and labels
    (not the termination time, which the factory derives from the clock)."""
    h = hashlib.sha256(converters.spec_to_pb(workspace.spec).SerializeToString(deterministic=True))
    h.update(json.dumps([workspace.owner, sorted(workspace.labels.items())]).encode())
    return h.hexdigest()


@dataclasses.dataclass
class _Outcome:
    """What a write transaction leaves for after its commit."""
    workspace: model.Workspace
    changed: bool = True


# Statements built once (their compiled form is cached by SQLAlchemy): values travel as parameters.
_INSERT_WORKSPACE = WorkspaceRow.__table__.insert().returning(WorkspaceRow.__table__.c.id)
_INSERT_EVENT = EventRow.__table__.insert()


@functools.lru_cache(maxsize=64)
def _update_workspace(columns: tuple[str, ...]):
    t = WorkspaceRow.__table__
    return t.update().where(t.c.id == sa.bindparam("row_id")).values(
        {c: sa.bindparam(c) for c in columns})


class ReadCache:
    """Workspaces (their wire messages) as last read, for Get. Every write in this process invalidates its name after
    commit; a read that raced with a write is not kept (the generation moved). Entries also age
    out after MAX_AGE seconds, which bounds staleness should another process write the same
    database."""
    MAX_AGE = 1.0
    MAX_ENTRIES = 10_000

    def __init__(self):
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self.generation = 0

    def get(self, name: str) -> bytes | None:
        entry = self._entries.get(name)
        if entry is not None and time.monotonic() - entry[0] < self.MAX_AGE:
            return entry[1]
        return None

    def put(self, name: str, workspace: bytes, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[name] = (time.monotonic(), workspace)

    def invalidate(self, name: str) -> None:
        with self._lock:
            self.generation += 1
            self._entries.pop(name, None)



def _held_row(conn, name: str, manager: str, *columns):
    """The workspace's row, locked, with the columns a manager's report needs; NOT_FOUND when it
    does not exist, FAILED_PRECONDITION when another manager (or none) holds it."""
    t = WorkspaceRow.__table__
    r = conn.execute(sa.select(t.c.id, t.c.manager_name, t.c.state, t.c.state_time, t.c.snapshot, *columns)
                     .where(t.c.name == name).with_for_update()).first()
    if r is None:
        raise errors.NotFound(f"workspace {name} does not exist")
    if r.manager_name != manager:
        held = f"held by {r.manager_name}" if r.manager_name else "not placed on any manager"
        raise errors.FailedPrecondition(f"{manager} may not report on {name}: it is {held}")
    return r

class _Retried(Exception):
    def __init__(self, workspace: model.Workspace):
        self.workspace = workspace


class RepositoryService:
    def __init__(self, uow: UnitOfWork, settings: RepositorySettings, managers: ManagerGateway,
                 clock: Callable[[], dt.datetime] = model.utcnow, hub: WatchHub | None = None):
        self.uow, self.settings, self.managers, self.clock = uow, settings, managers, clock
        self.hub = hub or WatchHub()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at: dict[str, tuple[float, float]] = {}  # name -> (monotonic due, backoff)
        self.cache = ReadCache()
        self.access = access_store.AccessStore(uow, clock)
        self.policy: PolicyFile | None = None  # set by the server when it runs with authentication
        self._images: image_store.ImageStore | None = None

    # ------------------------------------------------------------------ helpers
    def _load(self, session, name: str, field: str = "name", for_update: bool = False) -> WorkspaceRow:
        names.parse_workspace_name(name, field)
        row = store.get_row(session, name, for_update)
        if row is None:
            raise errors.NotFound(f"workspace {name} does not exist")
        return row

    def _move(self, session, row: WorkspaceRow, state: State, message: str, source: str, now: dt.datetime,
              event_type: EventType = EventType.STATE_CHANGED, state_time: dt.datetime | None = None) -> None:
        previous = row.state
        if previous != state.value:
            row.progress = None  # progress belongs to the state it was reported in
        row.state, row.state_message = state.value, message
        row.state_time = state_time or now
        row.update_time = now
        store.add_event(session, row, event_type, previous, state, message, source, now)

    def _notify(self, name: str) -> None:
        self.cache.invalidate(name)
        self.hub.notify(name)

    # ------------------------------------------------------------------ records (factory, managers)
    def create_record(self, request_id: str, workspace: model.Workspace, source: str = "factory",
                      caller: Caller = PLAIN_TEXT_CALLER) -> tuple[model.Workspace, bool]:
        """A new PENDING record (event CREATED), owned by `caller`. Idempotent on request_id: the
        same request again returns the first record and False; a different request under the
        same id is ALREADY_EXISTS. The site's policy decides on it for the caller (kinds, limits,
        and their quota group's holdings, counted in the same transaction as the insert)."""
        names.parse_workspace_name(workspace.name, "workspace.name")
        if workspace.termination_time is None:
            raise errors.InvalidArgument("is missing; the factory sets it from the lifetime", "workspace.termination_time")
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
        _check_owner(owner, " (the identity of your credentials)" if caller.principal is not None else "")
        result = model.Workspace(
            name=workspace.name, spec=workspace.spec, state=State.PENDING, state_message="accepted; not yet placed",
            endpoint=model.Endpoint(workspace.name, placed.manager, placed.manager_address) if placed.manager
            else model.Endpoint(), owner=owner, create_time=now, update_time=now,
            termination_time=workspace.termination_time, labels=dict(workspace.labels), request_id=request_id)
        events = [(EventType.CREATED, State.UNSPECIFIED, "recorded")]
        if placed.manager:
            events.append((EventType.PLACED, State.PENDING, f"placed on {placed.manager} ({placed.manager_address})"))
        t = WorkspaceRow.__table__
        try:
            # Plain statements rather than the ORM's unit of work: every create passes here.
            with self.uow(write=True) as session:
                conn = session.connection()
                decision = self._decide(session, caller, workspace, request_id, digest, now)
                if decision is not None:
                    c = decision.customisation
                    result.customisation = model.Customisation(decision.rule, decision.quota_group, c.account_pool,
                                                               c.unix_group, dict(c.environment), c.image)
                wid = conn.execute(_INSERT_WORKSPACE, dict(
                    name=workspace.name, spec=store.spec_to_json(workspace.spec), state=State.PENDING.value,
                    state_message=result.state_message, state_time=now, owner=owner,
                    quota_group=decision.quota_group if decision else "",
                    customisation=store.customisation_to_json(result.customisation),
                    manager_name=placed.manager or None, manager_address=placed.manager_address if placed.manager
                    else "", host_identity="", labels=dict(workspace.labels), request_id=request_id or None,
                    request_digest=digest, create_time=now, update_time=now,
                    termination_time=workspace.termination_time, destroy_reason="", event_seq=len(events),
                    snapshot=converters.workspace_to_pb(result).SerializeToString(deterministic=True),
                    enforcement=None)).scalar_one()
                if workspace.labels:
                    conn.execute(WorkspaceLabelRow.__table__.insert(),
                                 [{"workspace_id": wid, "key": k, "value": v} for k, v in workspace.labels.items()])
                conn.execute(_INSERT_EVENT, [
                    {"workspace_id": wid, "seq": seq, "time": now, "type": kind.value, "previous_state": before.value,
                     "state": State.PENDING.value, "message": text, "source": source}
                    for seq, (kind, before, text) in enumerate(events, 1)])
        except _Retried as retried:
            return retried.workspace, False
        except sa.exc.IntegrityError:
            # A concurrent create with the same request id (or name) won the race.
            existing = self._by_request_id(request_id, digest) if request_id else None
            if existing is not None:
                return existing, False
            raise errors.AlreadyExists(f"workspace {workspace.name} already exists") from None
        self.access.note_owner(result.name, owner)
        self._notify(result.name)
        return result, True

    def _decide(self, session, caller: Caller, workspace: model.Workspace, request_id: str, digest: str,
                now: dt.datetime) -> Decision | None:
        """The policy's decision for a verified caller (None for a plain-text one), with their
        quota group's holdings read in this transaction; raises when it refuses. A retry of a
        request already recorded is answered with its record instead (_Retried)."""
        if caller.principal is None or self.policy is None:
            return None
        request = WorkspaceRequest.from_spec(workspace.spec)
        first = self.policy.decide(caller.principal, request)
        if first.reasons:
            first.raise_if_refused()
        if session.bind.dialect.name == "postgresql":  # one create at a time per quota group
            session.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:g))"), {"g": first.quota_group})
        usage = access_store.group_usage(session, first.quota_group, now)
        decision = self.policy.decide(caller.principal, request, usage)
        if decision.exceeded and request_id:
            row = store.get_by_request_id(session, request_id)
            if row is not None and row.request_digest == digest:
                raise _Retried(store.to_workspace(row))
        decision.raise_if_refused()
        return decision

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
            row = self._load(session, name, for_update=True)
            if row.state in (State.TERMINATING.value, State.TERMINATED.value):
                raise errors.FailedPrecondition(f"cannot place {name}: it is {row.state}")
            if row.manager_name == endpoint.manager and row.manager_address == endpoint.manager_address:
                return store.to_workspace(row)  # a retry
            now = self.clock()
            row.manager_name, row.manager_address = endpoint.manager, endpoint.manager_address
            if endpoint.host_identity:
                row.host_identity = endpoint.host_identity
            row.update_time = now
            store.add_event(session, row, EventType.PLACED, row.state, row.state,
                            f"placed on {endpoint.manager} ({endpoint.manager_address})", source, now)
            result = store.to_workspace(row)
        self._notify(name)
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
            row = self._load(session, name, for_update=True)
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
        self._notify(name)
        return result

    def report_state(self, name: str, manager: str, state: State, message: str = "",
                     change_time: dt.datetime | None = None, host_identity: str = "",
                     event_type: EventType = EventType.STATE_CHANGED,
                     enforcement: model.Enforcement | None = None) -> model.Workspace:
        """A manager reports a change it made. Only the holding manager may; a report older than
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
        t, events = WorkspaceRow.__table__, EventRow.__table__
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
            result = converters.workspace_from_pb(wire)
        if state is State.TERMINATED:
            self._retry_at.pop(name, None)
        self._notify(name)
        return result

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
            _check_progress(progress)
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
        self._notify(name)
        return True

    def delete_record(self, name: str, reason: str = "") -> None:
        """Removes the record and history of a creation that failed before the workspace was
        realised: PENDING, or PROPAGATING when its image copy failed."""
        with self.uow(write=True) as session:
            row = self._load(session, name, for_update=True)
            if row.state not in (State.PENDING.value, State.PROPAGATING.value):
                raise errors.FailedPrecondition(
                    f"cannot remove the record of {name}: it is {row.state}; only PENDING or PROPAGATING records "
                    "may be removed, delete the workspace instead")
            session.delete(row)
        log.info("record %s removed: %s", name, reason or "no reason given")
        self._notify(name)

    # ------------------------------------------------------------------ reads
    def get_snapshot(self, name: str) -> bytes:
        """The workspace as its wire message (vws.v1.Workspace), as last written."""
        cached = self.cache.get(name)
        if cached is not None:
            return cached
        names.parse_workspace_name(name)
        generation = self.cache.generation
        connection = self.uow.raw_read()
        try:
            snapshot = store.read_snapshot(connection, self.uow.engine.dialect.name, name)
        finally:
            connection.close()
        if snapshot is None:
            raise errors.NotFound(f"workspace {name} does not exist")
        self.cache.put(name, snapshot, generation)
        return snapshot

    def get(self, name: str) -> model.Workspace:
        return converters.workspace_from_pb(workspace_pb2.Workspace.FromString(self.get_snapshot(name)))

    def list(self, page_size: int = 0, page_token: str = "", states=(), owner: str = "",
             labels: dict[str, str] | None = None, manager: str = "", visible_to: Caller = PLAIN_TEXT_CALLER
             ) -> tuple[list[model.Workspace], str]:
        """Newest first. Empty states means every state but TERMINATED. Only what `visible_to`
        may view (its own, and those it holds a role on; everything for administrators)."""
        size = checked_page_size(page_size)
        states = sorted(set(states), key=lambda s: s.value)
        if State.UNSPECIFIED in states:
            raise errors.InvalidArgument("holds STATE_UNSPECIFIED; list real states, or none for every state but "
                                         "TERMINATED", "states")
        if manager:
            names.parse_manager_name(manager, "manager")
        labels = dict(labels or {})
        fp = fingerprint(states=[s.value for s in states], owner=owner, labels=sorted(labels.items()),
                         manager=manager, caller=visible_to.identity)
        after = None
        if page_token:
            doc = decode_token(page_token, fp)
            try:
                after = (dt.datetime.fromisoformat(doc["c"]), int(doc["i"]))
                if after[0].tzinfo is None:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise errors.InvalidArgument("is not a page token of this listing", "page_token") from None
        with self.uow() as session:
            rows = store.list_rows(session, states=states, owner=owner, labels=labels, manager=manager,
                                   after=after, limit=size + 1, visible=self.access.visible_to(visible_to))
            out = [store.to_workspace(r) for r in rows[:size]]
            last = rows[size - 1] if len(rows) > size else None
            token = encode_token({"c": last.create_time.isoformat(), "i": last.id, "f": fp}) if last else ""
        return out, token

    def list_events(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list[model.Event], str]:
        """A workspace's history, oldest first."""
        size = checked_page_size(page_size)
        names.parse_workspace_name(parent, "parent")
        fp = fingerprint(parent=parent)
        after = sequence_after(page_token, fp)
        with self.uow() as session:
            row = self._load(session, parent, "parent")
            rows = store.list_events(session, row.id, after, size + 1)
            out = [store.to_event(parent, r) for r in rows[:size]]
            token = encode_token({"s": rows[size - 1].seq, "f": fp}) if len(rows) > size else ""
        return out, token

    def watch(self, name: str, is_active: Callable[[], bool] = lambda: True, poll: float = 1.0
              ) -> Iterator[model.Workspace]:
        """The workspace now, then at every change; ends after TERMINATED, when is_active()
        turns false, when the record is removed, or when the hub closes (server stop)."""
        names.parse_workspace_name(name)
        with self.hub.subscribe(name) as sub:
            current = self.get(name)  # subscribed first: nothing between this read and the wait is lost
            yield current
            while current.state is not State.TERMINATED:
                sub.wait(poll)
                if self.hub.closed or not is_active():
                    return
                try:
                    latest = self.get(name)
                except errors.NotFound:
                    return
                if latest != current:
                    current = latest
                    yield current

    # ------------------------------------------------------------------ user changes
    def update_termination_time(self, name: str, termination_time: dt.datetime | None = None,
                                extend_by: dt.timedelta | None = None) -> model.Workspace:
        if (termination_time is None) == (extend_by is None):
            raise errors.InvalidArgument("give either termination_time or extend_by", "termination_time")
        if extend_by is not None and extend_by <= dt.timedelta(0):
            raise errors.InvalidArgument("must be positive, like 2h", "extend_by")
        with self.uow(write=True) as session:
            row = self._load(session, name, for_update=True)
            if row.state in (State.TERMINATING.value, State.TERMINATED.value):
                raise errors.FailedPrecondition(f"cannot change the termination time of {name}: it is {row.state}")
            now = self.clock()
            new = termination_time if termination_time is not None else row.termination_time + extend_by
            field = "termination_time" if termination_time is not None else "extend_by"
            maximum = row.create_time + self.settings.max_lifetime
            if new <= now:
                raise errors.InvalidArgument(f"{new.isoformat()} is not in the future; give a later time", field)
            if new > maximum:
                raise errors.InvalidArgument(
                    f"{new.isoformat()} is past the maximum of {maximum.isoformat()} (the site's maximum lifetime "
                    f"of {self.settings.max_lifetime} from its creation)", "termination_time")
            old = row.termination_time
            row.termination_time = new
            row.update_time = now
            store.add_event(session, row, EventType.TERMINATION_TIME_CHANGED, row.state, row.state,
                            f"termination time {old.isoformat()} -> {new.isoformat()}", SOURCE, now)
            result = store.to_workspace(row)
        self._notify(name)
        return result

    def delete(self, name: str, reason: str = "deleted on request") -> model.Workspace:
        """Marks it TERMINATING and has its manager destroy it. An unreachable manager leaves it
        TERMINATING for the expiry loop to retry; a never-placed one is TERMINATED at once; a
        TERMINATED one is returned as it is."""
        with self.uow(write=True) as session:
            row = self._load(session, name, for_update=True)
            state = State(row.state)
            if state is State.TERMINATED:
                return store.to_workspace(row)
            now = self.clock()
            address, manager = row.manager_address, row.manager_name
            if not manager:
                self._move(session, row, State.TERMINATED, f"{reason}; it was never placed, nothing to destroy",
                           SOURCE, now)
                row.destroy_reason = ""
                address = None
            elif state is not State.TERMINATING or not row.destroy_reason:
                if state is not State.TERMINATING:
                    self._move(session, row, State.TERMINATING, reason, SOURCE, now)
                row.destroy_reason = reason
            reason = row.destroy_reason or reason
        self._notify(name)
        if address is not None:
            self._destroy_on_manager(name, manager, address, reason)
        return self.get(name)

    def _destroy_on_manager(self, name: str, manager: str, address: str, reason: str) -> bool:
        """Asks the manager (no transaction open: it reports back to this repository while it
        works). True when the workspace is known TERMINATED afterwards."""
        try:
            answer = self.managers.destroy(address, name, reason)
        except errors.Unavailable as exc:
            log.warning("destroy of %s: %s; it stays TERMINATING and is retried", name, exc.message)
            self._schedule_retry(name)
            return False
        except Exception as exc:  # noqa: BLE001 - the manager refused; keep it TERMINATING and retry
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            log.warning("destroy of %s refused by %s: %s; retried later", name, manager, detail)
            self._schedule_retry(name)
            return False
        self._retry_at.pop(name, None)
        if answer.state is not State.TERMINATED:
            return False
        with self.uow(write=True) as session:
            row = store.get_row(session, name, for_update=True)
            if row is None or row.state == State.TERMINATED.value:
                return True
            now = self.clock()
            self._move(session, row, State.TERMINATED, answer.state_message or "destroyed", manager, now)
            row.destroy_reason = ""
        self._notify(name)
        return True

    def _schedule_retry(self, name: str) -> None:
        _, backoff = self._retry_at.get(name, (0.0, 0.0))
        backoff = min(max(backoff * 2, 2.0), 60.0)
        self._retry_at[name] = (time.monotonic() + backoff, backoff)

    # ------------------------------------------------------------------ expiry
    def expire_once(self, limit: int = 200) -> list[str]:
        """Destroys the workspaces whose lifetime ended and retries unfinished destroys.
        Returns the names it acted on."""
        now = self.clock()
        with self.uow() as session:
            expired = store.expired_names(session, now, limit)
            retry = store.unfinished_destroys(session, limit)
        acted = []
        for name in expired:
            try:
                self.delete(name, LIFETIME_ENDED)
                acted.append(name)
            except errors.NotFound:
                pass
        mono = time.monotonic()
        for name in retry:
            if name in acted or self._retry_at.get(name, (0.0, 0.0))[0] > mono:
                continue
            try:
                self.delete(name)
                acted.append(name)
            except errors.NotFound:
                pass
        return acted

    def start_expiry(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop():
            interval = self.settings.expiry_interval.total_seconds()
            while not self._stop.wait(interval):
                try:
                    self.expire_once()
                except Exception:  # noqa: BLE001 - the loop must outlive one bad round
                    log.exception("expiry round failed; retrying in %.1fs", interval)
        self._thread = threading.Thread(target=loop, name="expiry", daemon=True)
        self._thread.start()

    def stop_expiry(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    # ------------------------------------------------------------------ managers
    def register_manager(self, info: model.ManagerInfo, identity: str = "") -> model.ManagerInfo:
        """`identity`: the certificate it registers with. A name stays bound to the first
        identity that registered it: another certificate cannot take a manager's place."""
        names.parse_manager_name(info.name, "manager.name")
        if not info.address:
            raise errors.InvalidArgument("is empty; give the manager's host:port", "manager.address")
        with self.uow(write=True) as session:
            now = self.clock()
            bound = session.get(ManagerRow, info.name)
            if bound is not None and bound.identity and identity and bound.identity != identity:
                raise errors.PermissionDenied(
                    f"{info.name} is registered by {bound.identity}, not {identity}; a manager registers under its "
                    "own name with its own certificate (remove the old registration to move the name)")
            row = store.upsert_manager(session, info, now)
            if identity:
                row.identity = identity
            result = store.to_manager(row, now, self.settings.heartbeat_timeout)
        log.info("manager %s registered at %s", info.name, info.address)
        return result

    def heartbeat(self, name: str, allocated: model.Capacity) -> model.ManagerInfo:
        """NOT_FOUND for a manager that never registered (it registers, then heartbeats)."""
        names.parse_manager_name(name)
        with self.uow(write=True) as session:
            now = self.clock()
            row = store.heartbeat_manager(session, name, allocated, now)
            if row is None:
                raise errors.NotFound(f"manager {name} is not registered; register it first")
            return store.to_manager(row, now, self.settings.heartbeat_timeout)

    def list_managers(self, page_size: int = 0, page_token: str = "") -> tuple[list[model.ManagerInfo], str]:
        size = checked_page_size(page_size)
        fp = fingerprint(what="managers")
        after = name_after(page_token, fp)
        with self.uow() as session:
            now = self.clock()
            rows = store.list_managers(session, after, size + 1)
            out = [store.to_manager(r, now, self.settings.heartbeat_timeout) for r in rows[:size]]
            token = encode_token({"n": rows[size - 1].name, "f": fp}) if len(rows) > size else ""
        return out, token

    # ------------------------------------------------------------------ images
    @property
    def image_store(self) -> image_store.ImageStore:
        if self._images is None:
            root = self.settings.image_store or (self.settings.data_dir and self.settings.data_dir / "images")
            if not root:
                raise errors.FailedPrecondition("this repository has no image store: set image_store or data_dir")
            self._images = image_store.ImageStore(root)
        return self._images

    def create_image(self, image_id: str, image: model.Image, owner: str) -> model.Image:
        """Adds an image to the catalogue: checks every field, copies each file into the image
        store under its digest (refusing one whose digest is not the expected one) and records
        it. Nothing is left behind when it fails: no row, no copied file."""
        spec = _checked_image(image_id, image, owner)
        name = spec.name
        with self.uow() as session:
            if image_store.exists(session, name):
                raise errors.AlreadyExists(f"image {name} already exists; choose another name, or remove it first "
                                           f"(vws image rm {spec.image_id})")
        store_ = self.image_store
        copies: list[pathlib.Path] = []
        placed: list[pathlib.Path] = []
        try:
            for i, f in enumerate(spec.files):
                copied = store_.incoming()
                copies.append(copied)
                result = _copy(f.location, copied, f.digest, i)
                if f.role is model.FileRole.DISK and image_store.format_of_file(copied) is not f.format:
                    raise errors.InvalidArgument(
                        f"{f.location} changed while it was copied: it is no longer "
                        f"{f.format.value.lower()}; copy it again when nothing writes to it",
                        f"image.files[{i}].location")
                spec.files[i] = dataclasses.replace(f, size_bytes=result.size, digest=result.digest,
                                                    location=str(store_.address(result.digest, f.role)))
            spec.size_bytes = sum(f.size_bytes for f in spec.files)
            spec.create_time = self.clock()
            with store_.lock():
                for copied, f in zip(copies, spec.files):
                    if store_.place(copied, pathlib.Path(f.location)):
                        placed.append(pathlib.Path(f.location))
                try:
                    with self.uow(write=True) as session:
                        image_store.insert(session, spec)
                except sa.exc.IntegrityError:
                    raise errors.AlreadyExists(f"image {name} already exists; choose another name") from None
        except BaseException:
            for path in copies:
                path.unlink(missing_ok=True)
            if placed:
                with store_.lock():
                    with self.uow() as session:
                        used = set(session.execute(sa.select(image_store.ImageFileRow.location).where(
                            image_store.ImageFileRow.location.in_([str(p) for p in placed]))).scalars())
                    for path in placed:
                        if str(path) not in used:
                            store_.remove(path)
            raise
        log.info("image %s added by %s: %s", name, spec.owner,
                 ", ".join(f"{f.role.value.lower()} {f.digest} ({f.size_bytes} bytes)" for f in spec.files))
        return spec

    def get_image(self, name: str) -> model.Image:
        full = names.image_name(names.parse_image_name(name))
        with self.uow() as session:
            found = image_store.get(session, full)
        if found is None:
            raise errors.NotFound(f"image {full} does not exist; `vws image list` shows the images there are")
        return found

    def list_images(self, owner: str = "", page_size: int = 0, page_token: str = "") -> tuple[list[model.Image], str]:
        """By name; with an owner, the public images and that owner's; without, every image."""
        size = checked_page_size(page_size)
        _check_owner(owner)
        fp = fingerprint(what="images", owner=owner)
        after = name_after(page_token, fp)
        with self.uow() as session:
            found = image_store.list_page(session, owner, after, size + 1)
        token = encode_token({"n": found[size - 1].name, "f": fp}) if len(found) > size else ""
        return found[:size], token

    def delete_image(self, name: str, by: Caller = PLAIN_TEXT_CALLER) -> None:
        """Removes the image from the catalogue, and from the store each of its files that no
        other image uses. Only its owner or an administrator may."""
        full = names.image_name(names.parse_image_name(name))
        store_ = self.image_store
        with store_.lock():
            with self.uow(write=True) as session:
                found = image_store.get(session, full, for_update=True)
                if found is None or (not by.privileged and found.owner != by.identity):
                    raise errors.NotFound(f"image {full} does not exist or is not yours; `vws image list` shows "
                                          "the images you may use")
                unused = image_store.delete(session, full)
            for location in unused:
                try:
                    store_.remove(location)
                except OSError as exc:
                    log.warning("image %s removed, but not its file %s: %s", full, location, exc.strerror)
        log.info("image %s removed (%d file(s) freed)", full, len(unused))

    # ------------------------------------------------------------------ usage
    def report_usage(self, manager: str, usages: list[model.Usage]) -> int:
        """A manager's latest cumulative figures for the workspaces it holds. Returns how many
        were kept: those of unknown workspaces, or of workspaces held by another manager, are
        not. Final figures (the workspace ended) are never replaced by later non-final ones."""
        names.parse_manager_name(manager, "manager")
        for i, u in enumerate(usages):
            names.parse_workspace_name(u.name, f"usage[{i}].name")
        accepted = 0
        with self.uow(write=True) as session:
            now = self.clock()
            # One order for every writer: two reports on the same workspaces never deadlock.
            for u in sorted(usages, key=lambda u: u.name):
                accepted += usage_store.record(session, u, manager, now)
        return accepted

    def get_usage(self, name: str) -> model.Usage:
        """What the workspace has used so far; zeros before its first sample."""
        names.parse_workspace_name(name)
        with self.uow() as session:
            wid = usage_store.workspace_id(session, name)
            if wid is None:
                raise errors.NotFound(f"workspace {name} does not exist")
            return usage_store.to_usage(name, usage_store.get(session, wid))

    def export_usage_records(self, owner: str = "", start: dt.datetime | None = None,
                             end: dt.datetime | None = None) -> tuple[str, int]:
        """A GFD.204 UsageRecords document of every workspace (of `owner`, when given) that ran at
        some time in [start, end), and how many records it holds."""
        _check_owner(owner)
        if start is not None and end is not None and end <= start:
            raise errors.InvalidArgument(f"{end.isoformat()} is not after start_time {start.isoformat()}; give a "
                                         "later end, or leave it unset for no end", "end_time")
        with self.uow() as session:
            records = usage_store.export_rows(session, owner, start, end)
        return usage_store.usage_records_xml(records), len(records)
