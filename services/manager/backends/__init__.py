"""Backend plug-ins: how a manager realises workspaces on its host."""
from __future__ import annotations

from vws.common import errors
from vws.manager.backends.base import Backend, BackendSettings

KINDS = ("dynamic-accounts", "account-pool")


def make_backend(settings: BackendSettings) -> Backend:
    if settings.kind == "dynamic-accounts":
        from vws.manager.backends.accounts import DynamicAccounts
        return DynamicAccounts(settings)
    if settings.kind == "account-pool":
        from vws.manager.backends.pool import AccountPool
        return AccountPool(settings)
    raise errors.InvalidArgument(
        f"{settings.kind!r} is not a backend; use one of: {', '.join(KINDS)}", "backend")
