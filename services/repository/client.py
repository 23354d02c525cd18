"""The repository's client, as the factory and the managers call it: its RecordService and
RepositoryService over gRPC, in domain objects. Every gRPC error is raised as its domain error
(vws.common.errors), so callers catch errors.NotFound and the like."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from ..common import clients, converters, errors, model
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from ..v1 import record_pb2, repository_pb2

if TYPE_CHECKING:
    from ..manager.state import Report

# The states a manager holds workspaces in: all but the end.
HELD = tuple(s for s in model.State if s not in (model.State.UNSPECIFIED, model.State.TERMINATED))


class RepositoryClient:
    def __init__(self, address: str):
        self.address = address
        self._repo = clients.repository(address)
        self._records = clients.records(address)

    # ------------------------------------------------------------- workspaces
    def get(self, name: str) -> model.Workspace | None:
        """None when the repository has no such workspace."""
        try:
            r = clients.call(self._repo.GetWorkspace, repository_pb2.GetWorkspaceRequest(name=name))
        except errors.NotFound:
            return None
        return converters.workspace_from_pb(r.workspace)

    def workspaces(self, states: Iterable[model.State], manager: str = "") -> list[model.Workspace]:
        """Every workspace in one of `states`, on `manager` when one is named."""
        request = repository_pb2.ListWorkspacesRequest(manager=manager,
                                                       states=[converters.state_to_pb(s) for s in states])
        return [converters.workspace_from_pb(w) for w in clients.listed(self._repo.ListWorkspaces, request,
                                                                          "workspaces")]

    def unfinished(self) -> list[model.Workspace]:
        """The creations not yet ended well, in model.UNFINISHED (the factory drives them on)."""
        return self.workspaces(model.UNFINISHED)

    def workspaces_on(self, manager: str) -> list[model.Workspace]:
        """What `manager` holds, TERMINATED aside."""
        return self.workspaces(HELD, manager)

    # ------------------------------------------------------------- records (RecordService)
    def create_record(self, request_id: str, workspace: model.Workspace, caller: Caller = PLAIN_TEXT_CALLER
                      ) -> tuple[model.Workspace, bool]:
        """The record under `request_id`, and whether this call made it (False: a retry)."""
        r = clients.call(self._records.CreateWorkspaceRecord, record_pb2.CreateWorkspaceRecordRequest(
            request_id=request_id, workspace=converters.workspace_to_pb(workspace),
            caller=converters.caller_to_pb(caller)))
        return converters.workspace_from_pb(r.workspace), r.created

    def assign(self, name: str, endpoint: model.Endpoint) -> model.Workspace:
        r = clients.call(self._records.AssignWorkspace, record_pb2.AssignWorkspaceRequest(
            name=name, endpoint=converters.endpoint_to_pb(endpoint)))
        return converters.workspace_from_pb(r.workspace)

    def delete_record(self, name: str, reason: str) -> None:
        clients.call(self._records.DeleteWorkspaceRecord, record_pb2.DeleteWorkspaceRecordRequest(name=name,
                                                                                                  reason=reason))

    def report(self, manager: str, report: Report) -> None:
        clients.call(self._records.ReportWorkspaceState, record_pb2.ReportWorkspaceStateRequest(
            name=report.name, manager=manager, state=converters.state_to_pb(report.state),
            message=report.message, change_time=converters.ts_to_pb(report.change_time),
            host_identity=report.host_identity, event_type=converters.event_type_to_pb(report.event_type),
            enforcement=converters.enforcement_to_pb(report.enforcement) if report.enforcement else None))

    def report_usage(self, manager: str, usages: list[model.Usage]) -> int:
        """How many of `usages` the repository took."""
        return clients.call(self._records.ReportUsage, record_pb2.ReportUsageRequest(
            manager=manager, usage=[converters.usage_to_pb(u) for u in usages])).accepted

    def progress(self, manager: str, name: str, progress: model.Progress | None) -> None:
        clients.call(self._records.ReportWorkspaceProgress, record_pb2.ReportWorkspaceProgressRequest(
            name=name, manager=manager, progress=converters.progress_to_pb(progress) if progress else None))

    def move(self, name: str, source: str, endpoint: model.Endpoint, message: str = "") -> model.Workspace:
        r = clients.call(self._records.MoveWorkspace, record_pb2.MoveWorkspaceRequest(
            name=name, source=source, endpoint=converters.endpoint_to_pb(endpoint), message=message))
        return converters.workspace_from_pb(r.workspace)

    # ------------------------------------------------------------- managers
    def managers(self) -> list[model.ManagerInfo]:
        return [converters.manager_from_pb(m) for m in clients.listed(
            self._repo.ListManagers, repository_pb2.ListManagersRequest(), "managers")]

    def register(self, info: model.ManagerInfo) -> None:
        clients.call(self._repo.RegisterManager,
                     repository_pb2.RegisterManagerRequest(manager=converters.manager_to_pb(info)))

    def heartbeat(self, manager: str, allocated: model.Capacity) -> bool:
        """False when `manager` is not registered (it registers again)."""
        try:
            clients.call(self._repo.HeartbeatManager, repository_pb2.HeartbeatManagerRequest(
                name=manager, allocated=converters.capacity_to_pb(allocated)))
        except errors.NotFound:
            return False
        return True

    def manager_address(self, name: str) -> str:
        """Where a registered, available manager answers; NotFound or FailedPrecondition otherwise."""
        for m in clients.listed(self._repo.ListManagers, repository_pb2.ListManagersRequest(), "managers"):
            if m.name == name:
                if converters.manager_from_pb(m).state is not model.ManagerState.AVAILABLE:
                    raise errors.FailedPrecondition(f"manager {name} is not available (no heartbeat); "
                                                    "migrate when it is back (`vws managers`)")
                return m.address
        raise errors.NotFound(f"destination: no manager {name} is registered (`vws managers` lists them)")

    # ------------------------------------------------------------- images
    def get_image(self, name: str) -> model.Image:
        """The catalogue entry; NotFound (naming the workspace's image field) when it is gone."""
        try:
            r = clients.call(self._repo.GetImage, repository_pb2.GetImageRequest(name=name))
        except errors.NotFound:
            raise errors.NotFound(f"workspace.spec.software.image: image {name} is not in the catalogue "
                                  "(`vws image list` shows them)") from None
        return converters.image_from_pb(r.image)
