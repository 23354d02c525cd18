"""Backend plug-ins: how a manager realises workspaces on its host."""
from __future__ import annotations

from ...common import errors
from .base import Backend, BackendSettings

KINDS = ("dynamic-accounts", "account-pool", "sandbox")


def make_backend(settings: BackendSettings) -> Backend:
    if settings.kind == "dynamic-accounts":
        from .accounts import DynamicAccounts
        return DynamicAccounts(settings)
    if settings.kind == "account-pool":
        from .pool import AccountPool
        return AccountPool(settings)
    if settings.kind == "sandbox":
        try:
            from .sandbox import SandboxBackend
        except ImportError:
            raise errors.Unimplemented("the sandbox backend is not part of this build") from None
        return SandboxBackend(settings)
    raise errors.InvalidArgument(
        f"{settings.kind!r} is not a backend; use one of: {', '.join(KINDS)}", "backend")
