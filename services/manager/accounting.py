"""Usage accounting on the manager: every `accounting_interval` it samples the counters of
every workspace it holds (Backend.sample), folds the samples into per-workspace accumulators
in one batch (the numeric core, vws.native.accounting), and reports the latest cumulative
figures to the repository (RecordService.ReportUsage). A failed report is simply retried at
the next round: the figures are cumulative, so the latest ones say everything.

The accumulators are kept in the manager's local SQLite file (a JSON row per workspace), so a
restart of the manager loses no CPU seconds: the next sample continues from the carried raw
counters. When a workspace ends (destroyed, expired, failed) finalise() samples it once more
and reports its final figures; they stay in the local file until the repository has them.

A program killed for going past the memory limit (oom_kills grew between two samples) is
recorded in the workspace's history as a LIMIT_REACHED event, through the manager's outbox so
that it reaches the repository after an outage too."""
from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import sqlite3
import threading
import time
import datetime as dt
from typing import Protocol

import numpy as np

from ..common import model, units
from .backends.base import Backend, Counters
from .held import HeldWorkspaces, described, is_unreachable
from .state import LocalWorkspace

log = logging.getLogger("vws.manager.accounting")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    name TEXT PRIMARY KEY,
    figures TEXT NOT NULL,
    final INTEGER NOT NULL DEFAULT 0
);
"""
# Not sampled: nothing runs yet, or it is gone.
_NOT_SAMPLED = (model.State.PENDING, model.State.TERMINATING, model.State.TERMINATED)
REPORT_BATCH = 500


class UsageReceiver(Protocol):
    """What accounting needs of the repository (vws.repository.client.RepositoryClient)."""

    def report_usage(self, manager: str, usages: list[model.Usage]) -> int: ...


def _core():
    from vws.native import accounting
    return accounting


def _time(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)


# How often the book is written to the local database (and at every final figure, and at close).
PERSIST_EVERY = 30.0


class UsageAccounting:
    """The usage book: workspace name -> index in the accumulators, which grow as needed."""

    def __init__(self, held: HeldWorkspaces, backend: Backend, receiver: UsageReceiver, path: pathlib.Path,
                 interval: float, core=None):
        """held: the workspaces held here (sampled; a limit reached is recorded in their history);
        backend: whose counters are sampled; receiver: where the figures are reported."""
        self.held, self.backend, self.receiver = held, backend, receiver
        self.interval = interval
        self.core = core or _core()
        self._fields = tuple(self.core.FIELDS)
        self._lock = threading.RLock()
        self._deliver_lock = threading.Lock()
        self._acc = self.core.Accumulators(16)
        self._index: dict[str, int] = {}
        self._free: list[int] = list(range(15, -1, -1))
        self._final: set[str] = set()
        # Finalised, in the book or not (delivered): never sampled again while it is still held.
        self._ended: set[str] = set()
        self._version: dict[str, int] = {}  # bumped at every change: what a report carried is known
        self._reported: dict[str, int] = {}
        self._unsaved: set[str] = set()
        self._saved_at = -1e9
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._load()

    # ----------------------------------------------------------------- the book
    def _load(self) -> None:
        for name, figures, final in self._db.execute("SELECT name, figures, final FROM usage").fetchall():
            i = self._slot(name)
            values = json.loads(figures)
            for f in self._fields:
                if f in values:
                    getattr(self._acc, f)[i] = values[f]
            if final:
                self._final.add(name)
                self._ended.add(name)
            self._version[name] = 1  # delivered or not, it is reported again after a restart

    def _slot(self, name: str) -> int:
        i = self._index.get(name)
        if i is not None:
            return i
        if not self._free:
            self._grow()
        i = self._free.pop()
        for f in self._fields:
            getattr(self._acc, f)[i] = 0
        self._index[name] = i
        return i

    def _grow(self) -> None:
        old = self._acc
        n = old.n
        self._acc = self.core.Accumulators(2 * n)
        for f in self._fields:
            getattr(self._acc, f)[:n] = getattr(old, f)
        self._free.extend(range(2 * n - 1, n - 1, -1))

    def _drop(self, name: str) -> None:
        i = self._index.pop(name, None)
        if i is not None:
            self._free.append(i)
        self._final.discard(name)
        self._version.pop(name, None)
        self._reported.pop(name, None)
        self._db.execute("DELETE FROM usage WHERE name = ?", (name,))

    def _persist(self, names: list[str]) -> None:
        rows = []
        for name in names:
            i = self._index[name]
            figures = {f: getattr(self._acc, f)[i].item() for f in self._fields}
            rows.append((name, json.dumps(figures), int(name in self._final)))
        if rows:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO usage (name, figures, final) VALUES (?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _changed(self, name: str) -> None:
        self._version[name] = self._version.get(name, 0) + 1

    def _fold(self, samples: list[tuple[str, Counters]]) -> list[tuple[str, int, int]]:
        """Feeds one sample per workspace to the core in one batch. Returns (name, programs
        killed for memory since the previous sample, the memory limit) where that grew."""
        batch = []
        for name, c in samples:
            new = name not in self._index
            i = self._slot(name)
            if new:
                # Counters start at zero when the workspace's cgroup is made: a zero baseline at
                # the first sample makes everything used before it count too.
                self._acc.first_time[i] = self._acc.last_time[i] = c.time
                self._acc.samples[i] = 1
            elif c.time <= self._acc.last_time[i]:
                continue  # the clock stepped back, or a later sample was folded already
            batch.append((i, name, c))
        if not batch:
            return []
        idx = np.array([i for i, _, _ in batch], dtype=np.int64)
        before = self._acc.oom_kills[idx].copy()

        def column(attribute, dtype=np.int64):
            return np.array([getattr(c, attribute) for _, _, c in batch], dtype=dtype)
        self.core.accumulate(self._acc, idx, column("time", np.float64), column("cpu_ns"),
                             column("cpu_throttled_ns"), column("memory_current"), column("memory_limit"),
                             column("oom_kills"), column("disk_used"), column("net_rx"), column("net_tx"))
        # The group's own high-water mark catches a peak between two samples.
        np.maximum.at(self._acc.memory_peak, idx, column("memory_peak"))
        grown = self._acc.oom_kills[idx] - before
        for _, name, _ in batch:
            self._changed(name)
        return [(name, int(k), c.memory_limit) for (_, name, c), k in zip(batch, grown.tolist()) if k > 0]

    def usage(self, name: str) -> model.Usage | None:
        """The figures of one workspace as the book has them; None when it has none."""
        with self._lock:
            i = self._index.get(name)
            if i is None:
                return None
            a = self._acc
            first, last = float(a.first_time[i]), float(a.last_time[i])
            samples = max(int(a.samples[i]) - 1, 0)  # not the zero baseline
            return model.Usage(
                name=name, start_time=_time(first) if samples else None, end_time=_time(last) if samples else None,
                cpu_seconds=float(a.cpu_seconds[i]), memory_current_bytes=int(a.memory_last[i]),
                memory_peak_bytes=int(a.memory_peak[i]), memory_byte_seconds=float(a.memory_byte_seconds[i]),
                disk_used_bytes=int(a.disk_last[i]), network_rx_bytes=int(a.net_rx[i]),
                network_tx_bytes=int(a.net_tx[i]), seconds_at_memory_limit=float(a.seconds_at_memory_limit[i]),
                seconds_at_cpu_limit=float(a.seconds_at_cpu_limit[i]), oom_kills=int(a.oom_kills[i]),
                samples=samples, final=name in self._final, wall_seconds=max(last - first, 0.0) if samples else 0.0)

    # ----------------------------------------------------------------- sampling
    def _sample(self, ws: LocalWorkspace) -> Counters | None:
        if not ws.host_identity:
            return None
        try:
            return self.backend.sample(ws.handle)
        except Exception:  # noqa: BLE001 - one workspace's counters must not stop the round
            log.exception("sampling %s failed", ws.name)
            return None

    def run_once(self) -> int:
        """One round: samples every workspace held, folds, reports. Returns how many were sampled."""
        holding = self.held.state.all()
        samples = []
        for ws in holding:
            if ws.state in _NOT_SAMPLED or ws.name in self._ended:
                continue
            c = self._sample(ws)
            if c is not None:
                samples.append((ws.name, c))
        held_names = {ws.name for ws in holding}
        with self._lock:
            samples = [(n, c) for n, c in samples if n not in self._ended]  # finalised meanwhile
            self._ended &= held_names
            oom = self._fold(samples)
            touched = [n for n, _ in samples]
            # In the book but no longer held, without final figures (it left by a path that did
            # not finalise it): what the book has is all there will be.
            for name in list(self._index):
                if name not in held_names and name not in self._final:
                    self._final.add(name)
                    self._changed(name)
                    touched.append(name)
            # Totals survive a restart without a write every round: the host's counters are
            # cumulative, so a book reloaded from an older write folds the difference in.
            self._unsaved.update(touched)
            if time.monotonic() - self._saved_at >= PERSIST_EVERY or any(n in self._final for n in touched):
                self._persist(sorted(self._unsaved & set(self._index)))
                self._unsaved.clear()
                self._saved_at = time.monotonic()
        for name, kills, limit in oom:
            self._limit_reached(name, kills, limit)
        self.deliver()
        return len(samples)

    def finalise(self, ws: LocalWorkspace, locked: bool = True) -> None:
        """The workspace ends (destroy, expiry, failure): one last sample, and its final figures
        reported. Called by the manager holding the workspace's lock (locked=True). Never raises:
        the destroy it precedes must go on."""
        try:
            c = self._sample(ws) if ws.state is not model.State.PENDING else None
            with self._lock:
                self._ended.add(ws.name)
                oom = self._fold([(ws.name, c)]) if c is not None else []
                self._slot(ws.name)  # zeros when it was never sampled: still, it ended
                self._final.add(ws.name)
                self._changed(ws.name)
                self._persist([ws.name])
            for name, kills, limit in oom:
                self._limit_reached(name, kills, limit, locked=locked)
            self.deliver()
        except Exception:  # noqa: BLE001
            log.exception("recording the final usage of %s failed", ws.name)

    def _limit_reached(self, name: str, kills: int, limit: int, locked: bool = False) -> None:
        what = f"{kills} program{'s' if kills != 1 else ''} killed for going past the memory limit"
        if limit:
            what += f" of {units.format_size(limit)}"
        with contextlib.nullcontext() if locked else self.held.lock(name):
            ws = self.held.state.get(name)  # read under the lock: its state as it is now
            if ws is None:
                return
            self.held.state.change(ws, ws.state, what, model.EventType.LIMIT_REACHED)
        log.info("%s: %s", name, what)
        self.held.flush()

    # ----------------------------------------------------------------- delivery
    def deliver(self) -> int:
        """Reports what changed since the last delivery. Returns how many were delivered; on
        any failure keeps them for the next round."""
        delivered = 0
        with self._deliver_lock:
            with self._lock:
                pending = [(n, v) for n, v in self._version.items() if self._reported.get(n) != v]
                usages = {n: self.usage(n) for n, _ in pending}
            for start in range(0, len(pending), REPORT_BATCH):
                chunk = pending[start:start + REPORT_BATCH]
                try:
                    self.receiver.report_usage(self.held.identity.name, [usages[n] for n, _ in chunk])
                except Exception as exc:  # noqa: BLE001
                    level = logging.DEBUG if is_unreachable(exc) else logging.WARNING
                    log.log(level, "reporting usage failed (%s); retrying next round", described(exc))
                    return delivered
                with self._lock:
                    for name, version in chunk:
                        if self._version.get(name) != version:
                            continue  # changed while in flight: reported again next round
                        self._reported[name] = version
                        if name in self._final:
                            self._drop(name)  # the repository has its final figures
                delivered += len(chunk)
        return delivered

    def close(self) -> None:
        with self._lock:
            pending = sorted(self._unsaved & set(self._index))
            if pending:
                self._persist(pending)
                self._unsaved.clear()
            self._db.close()
