"""The repository's view of the managers: only DestroyWorkspace, over gRPC. Unit tests use a
fake with the same method."""
from __future__ import annotations

from typing import Protocol

from ..common import clients, converters, errors, model
from ..v1 import manager_pb2


class ManagerGateway(Protocol):
    def destroy(self, address: str, name: str, reason: str) -> model.Workspace:
        """Destroys `name` on the manager at `address`; returns what the manager answers.
        Raises errors.Unavailable when the manager cannot be reached (the caller retries later),
        or another errors.VwsError when it refuses."""
        ...


class GrpcManagers:
    def __init__(self, timeout: float = clients.TIMEOUT):
        self.timeout = timeout

    def destroy(self, address: str, name: str, reason: str) -> model.Workspace:
        try:
            resp = clients.call(clients.manager(address).DestroyWorkspace,
                                manager_pb2.DestroyWorkspaceRequest(name=name, reason=reason), self.timeout)
        except clients.UNREACHABLE as exc:
            raise errors.Unavailable(f"manager at {address} unreachable: {exc.message}") from exc
        return converters.workspace_from_pb(resp.workspace)
