"""The factory's view of the repository and the managers, over gRPC."""
from __future__ import annotations

import grpc

from ..common import clients, converters, model
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from ..v1 import manager_pb2, record_pb2, repository_pb2, workspace_pb2

TIMEOUT = 10.0
# Deploy runs the workspace's set-up script; give it room.
DEPLOY_TIMEOUT = 300.0


class GrpcRecords:
    def __init__(self, address: str):
        self.address = address
        self._repo = clients.repository(address)
        self._records = clients.records(address)

    def create_record(self, request_id: str, workspace: model.Workspace, caller: Caller = PLAIN_TEXT_CALLER
                      ) -> tuple[model.Workspace, bool]:
        r = self._records.CreateWorkspaceRecord(record_pb2.CreateWorkspaceRecordRequest(
            request_id=request_id, workspace=converters.workspace_to_pb(workspace),
            caller=converters.caller_to_pb(caller)), timeout=TIMEOUT)
        return converters.workspace_from_pb(r.workspace), r.created

    def assign(self, name: str, endpoint: model.Endpoint) -> model.Workspace:
        r = self._records.AssignWorkspace(record_pb2.AssignWorkspaceRequest(
            name=name, endpoint=converters.endpoint_to_pb(endpoint)), timeout=TIMEOUT)
        return converters.workspace_from_pb(r.workspace)

    def delete_record(self, name: str, reason: str) -> None:
        self._records.DeleteWorkspaceRecord(record_pb2.DeleteWorkspaceRecordRequest(name=name, reason=reason),
                                            timeout=TIMEOUT)

    def managers(self) -> list[model.ManagerInfo]:
        out, token = [], ""
        while True:
            r = self._repo.ListManagers(repository_pb2.ListManagersRequest(page_size=1000, page_token=token),
                                        timeout=TIMEOUT)
            out.extend(converters.manager_from_pb(m) for m in r.managers)
            token = r.next_page_token
            if not token:
                return out

    def pending(self) -> list[model.Workspace]:
        out, token = [], ""
        while True:
            r = self._repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(
                page_size=1000, page_token=token, states=[workspace_pb2.Workspace.STATE_PENDING]), timeout=TIMEOUT)
            out.extend(converters.workspace_from_pb(w) for w in r.workspaces)
            token = r.next_page_token
            if not token:
                return out

    def get(self, name: str) -> model.Workspace:
        r = self._repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name), timeout=TIMEOUT)
        return converters.workspace_from_pb(r.workspace)

    def get_image(self, name: str) -> model.Image | None:
        """None when the repository has no such image."""
        try:
            r = self._repo.GetImage(repository_pb2.GetImageRequest(name=name), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return converters.image_from_pb(r.image)


class GrpcManagers:
    def deploy(self, address: str, workspace: model.Workspace) -> model.Workspace:
        r = clients.manager(address).DeployWorkspace(
            manager_pb2.DeployWorkspaceRequest(workspace=converters.workspace_to_pb(workspace)),
            timeout=DEPLOY_TIMEOUT)
        return converters.workspace_from_pb(r.workspace)
