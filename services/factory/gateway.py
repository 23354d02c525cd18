"""The factory's view of the managers, over gRPC: DeployWorkspace, and DestroyWorkspace as the
repository asks it. (The factory's view of the repository is vws.repository.client.)"""
from __future__ import annotations

import time

from ..common import clients, converters, errors, model
from ..repository import gateway
from ..v1 import manager_pb2
from .service import DEPLOY_TIMEOUT, StillDeploying


class GrpcManagers(gateway.GrpcManagers):
    def deploy(self, address: str, workspace: model.Workspace) -> model.Workspace:
        """The workspace as the manager at `address` deployed it; its refusal as a domain error,
        StillDeploying when it has not answered within DEPLOY_TIMEOUT."""
        began = time.monotonic()
        try:
            r = clients.call(clients.manager(address).DeployWorkspace,
                             manager_pb2.DeployWorkspaceRequest(workspace=converters.workspace_to_pb(workspace)),
                             DEPLOY_TIMEOUT)
        except errors.DeadlineExceeded as exc:
            if time.monotonic() - began < DEPLOY_TIMEOUT:
                raise  # the manager's own answer (a set-up script past its limit): the deploy was undone
            raise StillDeploying(f"the manager at {address} was still deploying {workspace.name} after "
                                 f"{DEPLOY_TIMEOUT:g}s") from exc
        return converters.workspace_from_pb(r.workspace)
