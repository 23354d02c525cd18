"""How a workspace's life ends: its termination time (changed by its users, never past the
site's maximum lifetime), its destroy (asked for, or when that time comes), and the expiry
loop that finds ended workspaces and retries destroys a manager has not finished."""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Callable

from ..common import errors, model, units
from ..common.config import RepositorySettings
from ..common.model import EventType, State
from . import store
from .db import UnitOfWork
from .gateway import ManagerGateway
from .workspaces import Workspaces

log = logging.getLogger("vws.repository")

SOURCE = "repository"
LIFETIME_ENDED = "lifetime ended"


class DestroyRetries:
    """When each unfinished destroy is next tried: backing off from 2 s to 60 s while its
    manager is unreachable or refuses."""
    FIRST, LONGEST = 2.0, 60.0

    def __init__(self):
        self._due: dict[str, tuple[float, float]] = {}  # name -> (monotonic due, backoff)

    def schedule(self, name: str) -> None:
        _, backoff = self._due.get(name, (0.0, 0.0))
        backoff = min(max(backoff * 2, self.FIRST), self.LONGEST)
        self._due[name] = (time.monotonic() + backoff, backoff)

    def waiting(self, name: str) -> bool:
        """Not yet due again."""
        return self._due.get(name, (0.0, 0.0))[0] > time.monotonic()

    def forget(self, name: str) -> None:
        """Its destroy is done (or another succeeded): no more retries."""
        self._due.pop(name, None)


class Lifetimes:
    def __init__(self, uow: UnitOfWork, settings: RepositorySettings, managers: ManagerGateway,
                 workspaces: Workspaces, retries: DestroyRetries,
                 clock: Callable[[], dt.datetime] = model.utcnow):
        self.uow, self.settings, self.managers, self.workspaces = uow, settings, managers, workspaces
        self.retries, self.clock = retries, clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ user changes
    def update_termination_time(self, name: str, termination_time: dt.datetime | None = None,
                                extend_by: dt.timedelta | None = None) -> model.Workspace:
        if (termination_time is None) == (extend_by is None):
            raise errors.InvalidArgument("give either termination_time or extend_by", "termination_time")
        if extend_by is not None and extend_by <= dt.timedelta(0):
            raise errors.InvalidArgument("must be positive, like 2h", "extend_by")
        with self.uow(write=True) as session:
            row = store.load(session, name, for_update=True)
            if row.state in (State.TERMINATING.value, State.TERMINATED.value):
                raise errors.FailedPrecondition(f"cannot change the termination time of {name}: it is {row.state}")
            now = self.clock()
            maximum = row.create_time + self.settings.max_lifetime
            why = (f"the maximum of {maximum.isoformat()} (the site's maximum lifetime, max_lifetime, of "
                   f"{units.format_duration(self.settings.max_lifetime)} from its creation)")
            if extend_by is not None:
                # Compared before it is added: a termination time near year 9999 plus any extension
                # would pass datetime's range.
                most = max(maximum - row.termination_time, dt.timedelta(0))
                if extend_by > most:
                    raise errors.InvalidArgument(
                        f"{units.format_duration(extend_by)} would take it past {why}; extend it by at most "
                        f"{units.format_duration(most)}", "extend_by")
            new = termination_time if termination_time is not None else row.termination_time + extend_by
            field = "termination_time" if termination_time is not None else "extend_by"
            if new <= now:
                raise errors.InvalidArgument(f"{new.isoformat()} is not in the future; give a later time", field)
            if new > maximum:
                raise errors.InvalidArgument(f"{new.isoformat()} is past {why}; give a time at most that",
                                             "termination_time")
            old = row.termination_time
            row.termination_time = new
            row.update_time = now
            store.add_event(session, row, EventType.TERMINATION_TIME_CHANGED, row.state, row.state,
                            f"termination time {old.isoformat()} -> {new.isoformat()}", SOURCE, now)
            result = store.to_workspace(row)
        self.workspaces.changed(name)
        return result

    def delete(self, name: str, reason: str = "deleted on request") -> model.Workspace:
        """Marks it TERMINATING and has its manager destroy it. An unreachable manager leaves it
        TERMINATING for the expiry loop to retry; a never-placed one is TERMINATED at once; a
        TERMINATED one is returned as it is."""
        with self.uow(write=True) as session:
            row = store.load(session, name, for_update=True)
            state = State(row.state)
            if state is State.TERMINATED:
                return store.to_workspace(row)
            now = self.clock()
            address, manager = row.manager_address, row.manager_name
            if not manager:
                store.move(session, row, State.TERMINATED, f"{reason}; it was never placed, nothing to destroy",
                           SOURCE, now)
                row.destroy_reason = ""
                address = None
            elif state is not State.TERMINATING or not row.destroy_reason:
                if state is not State.TERMINATING:
                    store.move(session, row, State.TERMINATING, reason, SOURCE, now)
                row.destroy_reason = reason
            reason = row.destroy_reason or reason
        self.workspaces.changed(name)
        if address is not None:
            self._destroy_on_manager(name, manager, address, reason)
        return self.workspaces.get(name)

    def _destroy_on_manager(self, name: str, manager: str, address: str, reason: str) -> bool:
        """Asks the manager (no transaction open: it reports back to this repository while it
        works). True when the workspace is known TERMINATED afterwards."""
        try:
            answer = self.managers.destroy(address, name, reason)
        except errors.Unavailable as exc:
            log.warning("destroy of %s: %s; it stays TERMINATING and is retried", name, exc.message)
            self.retries.schedule(name)
            return False
        except Exception as exc:  # noqa: BLE001 - the manager refused; keep it TERMINATING and retry
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            log.warning("destroy of %s refused by %s: %s; retried later", name, manager, detail)
            self.retries.schedule(name)
            return False
        self.retries.forget(name)
        if answer.state is not State.TERMINATED:
            return False
        with self.uow(write=True) as session:
            row = store.get_row(session, name, for_update=True)
            if row is None or row.state == State.TERMINATED.value:
                return True
            now = self.clock()
            store.move(session, row, State.TERMINATED, answer.state_message or "destroyed", manager, now)
            row.destroy_reason = ""
        self.workspaces.changed(name)
        return True

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
        for name in retry:
            if name in acted or self.retries.waiting(name):
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
