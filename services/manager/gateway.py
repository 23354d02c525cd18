"""The manager's view of the repository over gRPC."""
from __future__ import annotations

import grpc

from vws.common import clients, converters, errors, model
from vws.manager.state import Report
from vws.v1 import record_pb2, repository_pb2

TIMEOUT = 10.0


class GrpcRepository:
    def __init__(self, address: str):
        self.address = address
        self._repo = clients.repository(address)
        self._records = clients.records(address)

    def report(self, manager: str, report: Report) -> None:
        self._records.ReportWorkspaceState(record_pb2.ReportWorkspaceStateRequest(
            name=report.name, manager=manager, state=converters.state_to_pb(report.state),
            message=report.message, change_time=converters.ts_to_pb(report.change_time),
            host_identity=report.host_identity, event_type=converters.event_type_to_pb(report.event_type),
            enforcement=converters.enforcement_to_pb(report.enforcement) if report.enforcement else None),
            timeout=TIMEOUT)

    def report_usage(self, manager: str, usages: list[model.Usage]) -> int:
        return self._records.ReportUsage(record_pb2.ReportUsageRequest(
            manager=manager, usage=[converters.usage_to_pb(u) for u in usages]), timeout=TIMEOUT).accepted

    def register(self, info: model.ManagerInfo) -> None:
        self._repo.RegisterManager(repository_pb2.RegisterManagerRequest(manager=converters.manager_to_pb(info)),
                                   timeout=TIMEOUT)

    def heartbeat(self, manager: str, allocated: model.Capacity) -> bool:
        try:
            self._repo.HeartbeatManager(repository_pb2.HeartbeatManagerRequest(
                name=manager, allocated=converters.capacity_to_pb(allocated)), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def workspaces_on(self, manager: str) -> list[model.Workspace]:
        out, token = [], ""
        states = [converters.state_to_pb(s) for s in model.State
                  if s not in (model.State.UNSPECIFIED, model.State.TERMINATED)]
        while True:
            resp = self._repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(
                manager=manager, states=states, page_size=1000, page_token=token), timeout=TIMEOUT)
            out.extend(converters.workspace_from_pb(w) for w in resp.workspaces)
            token = resp.next_page_token
            if not token:
                return out

    def get(self, name: str) -> model.Workspace | None:
        try:
            resp = self._repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return converters.workspace_from_pb(resp.workspace)

    def progress(self, manager: str, name: str, progress: model.Progress | None) -> None:
        self._records.ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(
            name=name, manager=manager, progress=converters.progress_to_pb(progress) if progress else None),
            timeout=TIMEOUT)

    def get_image(self, name: str) -> model.Image:
        """The catalogue entry; NotFound (naming the workspace's image field) when it is gone."""
        try:
            resp = self._repo.GetImage(repository_pb2.GetImageRequest(name=name), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise errors.NotFound(f"workspace.spec.software.image: image {name} is not in the catalogue "
                                      "(`vws image list` shows them)") from None
            raise
        return converters.image_from_pb(resp.image)
