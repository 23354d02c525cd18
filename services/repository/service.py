"""The repository's service layer: the system of record's rules, in parts with one job each,
built here over one unit of work. Servicers only convert messages and call a part; every
part's method takes and returns domain objects and raises vws.common.errors.

  records     the factory's and the managers' writes: create (the policy decides), place,
              move, state and progress reports, the removal of a failed create
  workspaces  Get (through the read cache), List, events, Watch
  lifetimes   termination time, destroy, and the expiry loop that retries destroys
  managers    the registry of managers: register, heartbeat, list
  images      the image catalogue
  usage       usage accounting and its export
  access      role bindings and the audit trail (access.py)"""
from __future__ import annotations

import datetime as dt
from typing import Callable

from ..common import model
from ..common.config import RepositorySettings
from .access import AccessStore
from .accounting import UsageAccounting
from .catalogue import ImageCatalogue
from .db import UnitOfWork
from .gateway import ManagerGateway
from .lifetimes import DestroyRetries, Lifetimes
from .paging import PageTokens
from .policy import PolicyFile
from .records import Records
from .registry import ManagerRegistry
from .watch import WatchHub
from .workspaces import ReadCache, Workspaces


class RepositoryService:
    def __init__(self, uow: UnitOfWork, settings: RepositorySettings, managers: ManagerGateway,
                 clock: Callable[[], dt.datetime] = model.utcnow, hub: WatchHub | None = None,
                 policy: PolicyFile | None = None, access: AccessStore | None = None,
                 tokens: PageTokens | None = None, cache: ReadCache | None = None):
        """`managers`: how destroys reach the managers; `policy`: the site's, when the repository
        runs with authentication (None: plain text, nothing to decide); `access`: the role
        bindings and audit trail, when the gate was given them first; `tokens`: the page tokens,
        under the key kept in the data directory (None: a key of this process only); `cache`: Get's
        read cache, shared with `access`, whose first check of a workspace fills it."""
        self.uow, self.settings, self.clock, self.policy = uow, settings, clock, policy
        self.hub = hub or WatchHub()
        tokens = tokens or PageTokens.of_this_process()
        cache = cache or ReadCache()
        self.access = access or AccessStore(uow, clock, tokens=tokens, snapshots=cache)
        self.workspaces = Workspaces(uow, self.access, self.hub, cache, tokens)
        retries = DestroyRetries()  # the records forget a destroy's retries when its manager reports it done
        self.records = Records(uow, self.access, policy, self.workspaces.changed, retries, clock)
        self.lifetimes = Lifetimes(uow, settings, managers, self.workspaces, retries, clock)
        self.managers = ManagerRegistry(uow, settings, tokens, clock)
        self.images = ImageCatalogue(uow, settings, tokens, clock)
        self.usage = UsageAccounting(uow, clock)
