"""The audit entries a factory or a manager owes the repository, kept on local disk until the
repository has them: written before the call's reply leaves, shipped by the journal's own thread
in the order written, one at a time, and removed once the repository took each; what a crash or an absent repository
left behind is shipped when it answers again (at the next start at the latest).

An entry is written with the SQLite file in WAL mode and synchronous=NORMAL: it survives the
process's crash (kill -9), not the machine losing power before the next checkpoint. A crash
after the repository took an entry and before it left the journal sends it again: an entry may
be recorded twice, never lost."""
from __future__ import annotations

import logging
import pathlib
import sqlite3
import threading
from typing import Callable, Protocol

import grpc

from .. import clients, errors
from ...v1 import access_pb2

log = logging.getLogger("vws.audit")


class Sent(Protocol):
    """What sending an entry returns: a grpc.Future, or a concurrent.futures.Future in tests."""

    def add_done_callback(self, fn: Callable[["Sent"], None]) -> None: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...


class AuditJournal:
    def __init__(self, path: pathlib.Path, send: Callable[[access_pb2.AuditEntry], Sent],
                 retry_interval: float = 1.0):
        """`send(entry)`: starts the delivery of one entry to the repository and returns at once."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry BLOB NOT NULL)")
        self._send, self._retry_interval = send, retry_interval
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._sending = False
        self._closed = threading.Event()
        self._wake = threading.Event()  # set by append and close: the thread looks at once
        # Ships what an earlier run left, then retries whatever the repository could not take.
        self._thread = threading.Thread(target=self._retry, daemon=True, name="audit journal")
        self._thread.start()

    def append(self, entry: access_pb2.AuditEntry) -> None:
        """On disk when this returns; the journal's thread ships it, after those ahead of it,
        off the caller's path (the reply of the call it records does not wait for the send)."""
        with self._lock:
            self._db.execute("INSERT INTO entries (entry) VALUES (?)", (entry.SerializeToString(),))
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def close(self, grace: float = 2.0) -> None:
        """Stops shipping; an entry on its way is given `grace` seconds to be taken."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)
        with self._lock:
            self._idle.wait_for(lambda: not self._sending, timeout=grace)
            self._db.close()
            self._db = None

    def _ship_next(self) -> None:
        with self._lock:
            if self._sending or self._closed.is_set():
                return
            row = self._db.execute("SELECT seq, entry FROM entries ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return
            self._sending = True
        seq, blob = row
        try:
            sent = self._send(access_pb2.AuditEntry.FromString(blob))
        except Exception:  # noqa: BLE001 - the entry stays; the retry loop sends it again
            log.exception("could not send audit entry %d", seq)
            with self._lock:
                self._done_sending()
            return
        sent.add_done_callback(lambda done: self._delivered(seq, done))

    def _delivered(self, seq: int, done: Sent) -> None:
        exc = done.exception()
        if exc is not None and isinstance(errors.from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else exc,
                                          clients.UNREACHABLE):
            with self._lock:
                self._done_sending()
            return  # the repository is away: the retry loop sends it again
        with self._lock:
            self._done_sending()
            if self._db is None:
                return  # closed meanwhile: sent again at the next start
            if exc is not None:
                # Refused for good: never accepted however often sent. The log keeps it.
                log.error("the repository refused audit entry %d (%s): %s", seq,
                          access_pb2.AuditEntry.FromString(self._db.execute(
                              "SELECT entry FROM entries WHERE seq = ?", (seq,)).fetchone()[0]), exc)
            self._db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
        self._ship_next()

    def _done_sending(self) -> None:
        """Called with the lock held."""
        self._sending = False
        self._idle.notify_all()

    def _retry(self) -> None:
        """Ships at start, at each append, and every retry interval (what the repository could
        not take); a delivered entry's callback ships the next at once."""
        while not self._closed.is_set():
            self._ship_next()
            self._wake.wait(self._retry_interval)
            self._wake.clear()
