"""The managers a site has: each registers under its name with its certificate, then tells the
repository it is alive (its heartbeat, with what it holds); a listing shows who is available."""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from ..common import errors, model, names
from ..common.config import RepositorySettings
from . import store
from .db import ManagerRow, UnitOfWork
from .paging import PageTokens, checked_page_size, listing

log = logging.getLogger("vws.repository")


class ManagerRegistry:
    def __init__(self, uow: UnitOfWork, settings: RepositorySettings, tokens: PageTokens,
                 clock: Callable[[], dt.datetime] = model.utcnow):
        self.uow, self.settings, self.tokens, self.clock = uow, settings, tokens, clock

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
        what = listing("managers")
        after = self.tokens.name_after(page_token, what, names.parse_manager_name)
        with self.uow() as session:
            now = self.clock()
            rows = store.list_managers(session, after, size + 1)
            out = [store.to_manager(r, now, self.settings.heartbeat_timeout) for r in rows[:size]]
            token = self.tokens.name_token(what, rows[size - 1].name) if len(rows) > size else ""
        return out, token
