"""The in-process hub WatchWorkspace waits on: the service layer calls notify(name) after every
committed change, and each watcher of that name wakes up and re-reads the record. Watchers also
re-read on a timeout, so a change committed by another repository process sharing the database
reaches them too, only later."""
from __future__ import annotations

import threading


class _Entry:
    __slots__ = ("cond", "version", "watchers")

    def __init__(self, lock: threading.Lock):
        self.cond = threading.Condition(lock)
        self.version = 0
        self.watchers = 0


class WatchHub:
    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._closed = False

    def notify(self, name: str) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                entry.version += 1
                entry.cond.notify_all()

    def close(self) -> None:
        """Wakes every watcher for good (server stop): their streams end."""
        with self._lock:
            self._closed = True
            for entry in self._entries.values():
                entry.cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def subscribe(self, name: str) -> "Subscription":
        return Subscription(self, name)

    def watcher_count(self, name: str) -> int:
        with self._lock:
            entry = self._entries.get(name)
            return entry.watchers if entry else 0


class Subscription:
    """`with hub.subscribe(name) as sub:` then `sub.wait(timeout)`; subscribe before the first
    read so that no change between the read and the wait is missed."""

    def __init__(self, hub: WatchHub, name: str):
        self.hub, self.name = hub, name
        self._seen = 0

    def __enter__(self) -> "Subscription":
        with self.hub._lock:
            entry = self.hub._entries.get(self.name)
            if entry is None:
                entry = self.hub._entries[self.name] = _Entry(self.hub._lock)
            entry.watchers += 1
            self._entry = entry
            self._seen = entry.version
        return self

    def __exit__(self, *exc) -> None:
        with self.hub._lock:
            self._entry.watchers -= 1
            if self._entry.watchers == 0 and self.hub._entries.get(self.name) is self._entry:
                del self.hub._entries[self.name]

    def wait(self, timeout: float) -> bool:
        """True when a change was notified since the last wait (or the hub closed)."""
        with self.hub._lock:
            if self._entry.version == self._seen and not self.hub._closed:
                self._entry.cond.wait(timeout)
            changed = self._entry.version != self._seen
            self._seen = self._entry.version
            return changed or self.hub._closed
