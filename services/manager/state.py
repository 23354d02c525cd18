"""The manager's own record of what it holds, kept on local disk so that after any crash it can
reconcile its host with the repository, plus an outbox of state changes not yet delivered to
the repository (they reach it, in order, when it is back)."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import pathlib
import sqlite3
import threading
from typing import Iterator

from ..common import converters, model
from .backends.base import HostHandle
from ..v1 import workspace_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    state_message TEXT NOT NULL DEFAULT '',
    host_identity TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    termination_time TEXT,
    create_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    change_time TEXT NOT NULL,
    host_identity TEXT NOT NULL DEFAULT '',
    event_type TEXT NOT NULL,
    enforcement TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS migrations (
    name TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    peer TEXT NOT NULL,
    peer_address TEXT NOT NULL,
    prior_state TEXT NOT NULL,
    record TEXT NOT NULL,
    start_time TEXT NOT NULL
);
"""


@dataclasses.dataclass
class LocalWorkspace:
    name: str
    spec: model.WorkspaceSpec
    state: model.State
    state_message: str = ""
    host_identity: str = ""
    owner: str = ""
    labels: dict = dataclasses.field(default_factory=dict)
    termination_time: dt.datetime | None = None
    create_time: dt.datetime | None = None

    @property
    def workspace_id(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def handle(self) -> HostHandle:
        """How the backend finds it on the host."""
        return HostHandle(self.workspace_id, self.host_identity, self.spec.kind)


@dataclasses.dataclass
class Report:
    seq: int
    name: str
    state: model.State
    message: str
    change_time: dt.datetime
    host_identity: str
    event_type: model.EventType
    enforcement: model.Enforcement | None = None


OUT, IN = "out", "in"  # a migration's direction: from this manager, to it


@dataclasses.dataclass
class Migration:
    """A migration under way, on record before the host changes so that a restart finds it:
    direction OUT on the source, IN on the destination; record holds what each end needs
    to finish or undo it (the package, the transfer ids, the workspace as it arrived)."""
    name: str
    direction: str
    peer: str  # managers/{id} at the other end
    peer_address: str
    prior_state: model.State
    record: dict = dataclasses.field(default_factory=dict)
    start_time: dt.datetime | None = None

    @classmethod
    def arrival(cls, workspace: model.Workspace, source: str, package: str, transfer_ids: dict[str, str]
                ) -> "Migration":
        """An accepted migration to this manager of `workspace`, as the source sent it."""
        return cls(workspace.name, IN, source, "", workspace.state, {
            "workspace": base64.b64encode(converters.workspace_to_pb(workspace).SerializeToString()).decode(),
            "package": package, "transfer_ids": transfer_ids})

    @property
    def arriving(self) -> model.Workspace:
        """The workspace an accepted migration (IN) brings, as the source sent it."""
        return converters.workspace_from_pb(workspace_pb2.Workspace.FromString(base64.b64decode(self.record["workspace"])))


def _t(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _pt(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


class LocalState:
    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        if "enforcement" not in columns:  # a state file from before limits were reported
            self._db.execute("ALTER TABLE outbox ADD COLUMN enforcement TEXT NOT NULL DEFAULT ''")
        self._lock = threading.RLock()
        self._specs: dict[str, tuple[bytes, model.WorkspaceSpec]] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, r) -> LocalWorkspace:
        # A spec never changes after creation: parsed once per name and blob.
        cached = self._specs.get(r[0])
        if cached is None or cached[0] != r[1]:
            cached = (r[1], converters.spec_from_pb(workspace_pb2.WorkspaceSpec.FromString(r[1])))
            self._specs[r[0]] = cached
        return LocalWorkspace(
            # the spec is shared: callers treat a workspace's spec as read-only
            name=r[0], spec=cached[1], state=model.State(r[2]), state_message=r[3],
            host_identity=r[4], owner=r[5], labels=json.loads(r[6]), termination_time=_pt(r[7]),
            create_time=_pt(r[8]))

    # ------------------------------------------------------------- migrations
    def put_migration(self, m: Migration) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO migrations VALUES (?,?,?,?,?,?,?)",
                             (m.name, m.direction, m.peer, m.peer_address, m.prior_state.value, json.dumps(m.record),
                              _t(m.start_time or model.utcnow())))

    def migration(self, name: str) -> Migration | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM migrations WHERE name = ?", (name,)).fetchone()
        return Migration(r[0], r[1], r[2], r[3], model.State(r[4]), json.loads(r[5]), _pt(r[6])) if r else None

    def migrations(self) -> list[Migration]:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM migrations ORDER BY start_time")]
        return [m for n in names if (m := self.migration(n)) is not None]

    def drop_migration(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM migrations WHERE name = ?", (name,))

    def arriving(self) -> list[model.Workspace]:
        """The workspaces accepted here by a migration and still on their way."""
        return [m.arriving for m in self.migrations() if m.direction == IN and self.get(m.name) is None]

    def get(self, name: str) -> LocalWorkspace | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM workspaces WHERE name = ?", (name,)).fetchone()
        return self._row(r) if r else None

    def all(self) -> list[LocalWorkspace]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM workspaces ORDER BY create_time").fetchall()
        return [self._row(r) for r in rows]

    def insert(self, ws: LocalWorkspace) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO workspaces VALUES (?,?,?,?,?,?,?,?,?)",
                (ws.name, converters.spec_to_pb(ws.spec).SerializeToString(), ws.state.value, ws.state_message,
                 ws.host_identity, ws.owner, json.dumps(ws.labels), _t(ws.termination_time),
                 _t(ws.create_time or model.utcnow())))

    def change(self, ws: LocalWorkspace, state: model.State, message: str,
               event_type: model.EventType = model.EventType.STATE_CHANGED, *, report: bool = True,
               enforcement: model.Enforcement | None = None) -> Report | None:
        """Moves a workspace to a state and queues the report, in one local transaction.
        A TERMINATED workspace leaves the local table: only its report remains to deliver."""
        now = model.utcnow()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if state is model.State.TERMINATED:
                    self._db.execute("DELETE FROM workspaces WHERE name = ?", (ws.name,))
                    self._specs.pop(ws.name, None)
                else:
                    self._db.execute(
                        "UPDATE workspaces SET state = ?, state_message = ?, host_identity = ? WHERE name = ?",
                        (state.value, message, ws.host_identity, ws.name))
                seq = None
                if report:
                    cur = self._db.execute(
                        "INSERT INTO outbox (name, state, message, change_time, host_identity, event_type,"
                        " enforcement) VALUES (?,?,?,?,?,?,?)",
                        (ws.name, state.value, message, now.isoformat(), ws.host_identity, event_type.value,
                         json.dumps(dataclasses.asdict(enforcement)) if enforcement else ""))
                    seq = cur.lastrowid
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        ws.state, ws.state_message = state, message
        if seq is None:
            return None
        return Report(seq, ws.name, state, message, now, ws.host_identity, event_type, enforcement)

    def forget(self, name: str) -> None:
        """Drops a workspace whose deploy failed and was undone: nothing of it is left."""
        with self._lock:
            self._db.execute("DELETE FROM workspaces WHERE name = ?", (name,))
            self._specs.pop(name, None)

    def pending_reports(self) -> Iterator[Report]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM outbox ORDER BY seq").fetchall()
        for r in rows:
            yield Report(r[0], r[1], model.State(r[2]), r[3], _pt(r[4]), r[5], model.EventType(r[6]),
                         model.Enforcement(**json.loads(r[7])) if r[7] else None)

    def delivered(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def outbox_size(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
