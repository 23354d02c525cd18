"""The factory's view of the managers, over gRPC: DeployWorkspace. (The repository's is
vws.repository.client.)"""
from __future__ import annotations

from ..common import clients, converters, model
from ..v1 import manager_pb2

# Deploy runs the workspace's set-up script; give it room.
DEPLOY_TIMEOUT = 300.0


class GrpcManagers:
    def deploy(self, address: str, workspace: model.Workspace) -> model.Workspace:
        """The workspace as the manager at `address` deployed it; its refusal as a domain error."""
        r = clients.call(clients.manager(address).DeployWorkspace,
                         manager_pb2.DeployWorkspaceRequest(workspace=converters.workspace_to_pb(workspace)),
                         DEPLOY_TIMEOUT)
        return converters.workspace_from_pb(r.workspace)
