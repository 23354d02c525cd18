"""Reading workspaces: Get (its stored wire message, through the ReadCache), List, a
workspace's events and Watch. Every writer calls `changed(name)` after its commit, which
drops the cached copy and wakes the name's watchers."""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from ..common import converters, errors, model, names
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from ..common.model import State
from . import store
from .access import AccessStore
from .db import UnitOfWork
from .paging import PageTokens, checked_page_size, listing
from .watch import WatchHub
from ..v1 import workspace_pb2


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


class Workspaces:
    def __init__(self, uow: UnitOfWork, access: AccessStore, hub: WatchHub, cache: ReadCache, tokens: PageTokens):
        self.uow, self.access, self.hub, self.cache, self.tokens = uow, access, hub, cache, tokens

    def changed(self, name: str) -> None:
        """After a commit that changed `name`: Get reads it again, its watchers wake up."""
        self.cache.invalidate(name)
        self.hub.notify(name)

    def get_snapshot(self, name: str) -> bytes:
        """The workspace as its wire message (vws.v1.Workspace), as last written."""
        cached = self.cache.get(name)
        if cached is not None:
            return cached
        names.parse_workspace_name(name)
        generation = self.cache.generation
        with self.uow.point_read() as connection:
            snapshot = store.read_snapshot(connection, self.uow.engine.dialect.name, name)
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
        if len(labels) > names.MAX_LABELS:
            raise errors.InvalidArgument(f"has {len(labels)} label filters; a workspace has at most {names.MAX_LABELS} "
                                         "labels, so filter on fewer", "labels")
        what = listing("workspaces", states=[s.value for s in states], owner=owner, labels=sorted(labels.items()),
                       manager=manager, caller=visible_to.identity)
        after = self.tokens.time_and_id_after(page_token, what)
        with self.uow() as session:
            rows = store.list_rows(session, states=states, owner=owner, labels=labels, manager=manager,
                                   after=after, limit=size + 1, visible=self.access.visible_to(visible_to))
            out = [store.to_workspace(r) for r in rows[:size]]
            last = rows[size - 1] if len(rows) > size else None
            token = self.tokens.time_and_id_token(what, last.create_time, last.id) if last else ""
        return out, token

    def list_events(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list[model.Event], str]:
        """A workspace's history, oldest first."""
        size = checked_page_size(page_size)
        names.parse_workspace_name(parent, "parent")
        what = listing("events", parent=parent)
        after = self.tokens.sequence_after(page_token, what)
        with self.uow() as session:
            row = store.load(session, parent, "parent")
            rows = store.list_events(session, row.id, after, size + 1)
            out = [store.to_event(parent, r) for r in rows[:size]]
            token = self.tokens.sequence_token(what, rows[size - 1].seq) if len(rows) > size else ""
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
