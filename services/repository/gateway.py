"""The repository's view of the managers: only DestroyWorkspace, over gRPC. Unit tests use a
fake with the same method."""
from __future__ import annotations

from typing import Protocol

import grpc

from ..common import clients, converters, errors, model
from ..v1 import manager_pb2

TIMEOUT = 10.0
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class ManagerGateway(Protocol):
    def destroy(self, address: str, name: str, reason: str) -> model.Workspace:
        """Destroys `name` on the manager at `address`; returns what the manager answers.
        Raises errors.Unavailable when the manager cannot be reached (the caller retries later),
        or another errors.VwsError / grpc.RpcError when it refuses."""
        ...


class GrpcManagers:
    def __init__(self, timeout: float = TIMEOUT):
        self.timeout = timeout

    def destroy(self, address: str, name: str, reason: str) -> model.Workspace:
        try:
            resp = clients.manager(address).DestroyWorkspace(
                manager_pb2.DestroyWorkspaceRequest(name=name, reason=reason), timeout=self.timeout)
        except grpc.RpcError as exc:
            if hasattr(exc, "code") and exc.code() in UNREACHABLE:
                raise errors.Unavailable(f"manager at {address} unreachable: {exc.details()}") from exc
            raise
        return converters.workspace_from_pb(resp.workspace)
