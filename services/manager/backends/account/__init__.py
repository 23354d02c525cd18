"""UNIX_ACCOUNT workspaces: one Unix account per workspace, in cgroups of its own. Two variants,
chosen by the manager's `backend` setting: an account made per workspace (dynamic-accounts) or
leased from a fixed pool (account-pool).

    users.py         host accounts: the account tools, names, entries, locking
    admission.py     what this host can enforce, checked before anything is made
    provisioning.py  staged files, environment and the set-up script
    programs.py      programs started as the account in its cgroups, and killed
    leftovers.py     what an account leaves outside its home, found and removed
    packing.py       the home as one archive, for migration
    backend.py       AccountBackend: what both variants share
    dynamic.py       DynamicAccounts; pool.py: AccountPool"""
from __future__ import annotations

import dataclasses

from ....common import errors
from ....common.config import ManagerSettings
from ..base import Backend, BackendSettings
from .backend import AccountBackend
from .dynamic import DynamicAccounts
from .pool import AccountPool

VARIANTS: dict[str, type[AccountBackend]] = {DynamicAccounts.name: DynamicAccounts, AccountPool.name: AccountPool}


def make_backend(settings: BackendSettings) -> AccountBackend:
    """The variant settings.kind names (the manager's `backend` setting)."""
    variant = VARIANTS.get(settings.kind)
    if variant is None:
        raise errors.InvalidArgument(
            f"{settings.kind!r} is not a backend; use one of: {', '.join(VARIANTS)}", "backend")
    return variant(settings)


def enabled(settings: ManagerSettings) -> bool:
    """Always: accounts are the default kind, offered by every manager."""
    return True


def create(settings: ManagerSettings, shared: BackendSettings, get_image) -> Backend:
    return make_backend(dataclasses.replace(shared, kind=settings.backend))
