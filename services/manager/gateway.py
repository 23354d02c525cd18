"""The manager's view of the repository over gRPC."""
from __future__ import annotations

import grpc

from ..common import clients, converters, errors, model
from .state import Report
from ..v1 import manager_pb2, record_pb2, repository_pb2

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

    def manager_address(self, name: str) -> str:
        """Where a registered, available manager answers; NotFound or FailedPrecondition otherwise."""
        token = ""
        while True:
            resp = self._repo.ListManagers(repository_pb2.ListManagersRequest(page_size=1000, page_token=token),
                                           timeout=TIMEOUT)
            for m in resp.managers:
                if m.name == name:
                    if converters.manager_from_pb(m).state is not model.ManagerState.AVAILABLE:
                        raise errors.FailedPrecondition(f"manager {name} is not available (no heartbeat); "
                                                        "migrate when it is back (`vws managers`)")
                    return m.address
            token = resp.next_page_token
            if not token:
                raise errors.NotFound(f"destination: no manager {name} is registered (`vws managers` lists them)")

    def move(self, name: str, source: str, endpoint: model.Endpoint, message: str = "") -> model.Workspace:
        r = self._records.MoveWorkspace(record_pb2.MoveWorkspaceRequest(
            name=name, source=source, endpoint=converters.endpoint_to_pb(endpoint), message=message), timeout=TIMEOUT)
        return converters.workspace_from_pb(r.workspace)

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


class GrpcPeers:
    """Other managers, as the migration's source reaches its destination: ManagerService for
    the migration's steps, TransferService (vws.manager.transfer) for the files."""
    ACCEPT_TIMEOUT = 60.0
    FINISH_TIMEOUT = 600.0  # restoring a guest's memory, unpacking a home

    def __init__(self, stall_timeout: float = 30.0, give_up_after: float = 600.0):
        self.stall_timeout, self.give_up_after = stall_timeout, give_up_after

    def accept(self, address: str, workspace: model.Workspace, source: str, files, package: str) -> dict[str, str]:
        r = clients.manager(address).AcceptMigration(manager_pb2.AcceptMigrationRequest(
            workspace=converters.workspace_to_pb(workspace), source=source, package=package,
            files=[manager_pb2.MigrationFile(role=f.role, size_bytes=f.size_bytes, digest=f.digest) for f in files]),
            timeout=self.ACCEPT_TIMEOUT)
        return dict(r.transfer_ids)

    def send(self, address: str, path, transfer_id: str, hint: list[str], progress):
        from . import migration, transfer
        r = transfer.send_file(address, path, transfer_id, candidates_hint=hint,
                               progress=lambda p: progress(p.bytes_done, p.bytes_total),
                               options=transfer.SendOptions(stall_timeout=self.stall_timeout,
                                                            give_up_after=self.give_up_after))
        return migration.Sent(r.bytes_total, r.bytes_sent, r.bytes_reused, r.bytes_zero, r.resumes)

    def finish(self, address: str, name: str) -> model.Workspace:
        r = clients.manager(address).FinishMigration(manager_pb2.FinishMigrationRequest(name=name),
                                                     timeout=self.FINISH_TIMEOUT)
        return converters.workspace_from_pb(r.workspace)

    def abort(self, address: str, name: str, reason: str) -> None:
        clients.manager(address).AbortMigration(manager_pb2.AbortMigrationRequest(name=name, reason=reason),
                                                timeout=TIMEOUT)
