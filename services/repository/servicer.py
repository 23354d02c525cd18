"""gRPC servicers: convert, call the service layer, convert back. Errors are mapped onto
statuses by the shared interceptor (vws.common.server)."""
from __future__ import annotations

from ..common import converters, errors
from ..common.auth import gate
from ..common.auth.gate import Authorizer
from ..common.converters import caller_from_pb, caller_to_pb
from .access_servicer import audit_entry_from_pb, entitlement
from .service import RepositoryService
from ..v1 import record_pb2, record_pb2_grpc, repository_pb2, repository_pb2_grpc, workspace_pb2

ws_pb = converters.workspace_to_pb


class RepositoryServicer(repository_pb2_grpc.RepositoryServiceServicer):
    def __init__(self, service: RepositoryService):
        self.workspaces, self.lifetimes, self.images = service.workspaces, service.lifetimes, service.images
        self.managers, self.usage = service.managers, service.usage

    def GetWorkspace(self, request, context):
        return repository_pb2.GetWorkspaceResponse(
            workspace=workspace_pb2.Workspace.FromString(self.workspaces.get_snapshot(request.name)))

    def ListWorkspaces(self, request, context):
        items, token = self.workspaces.list(
            request.page_size, request.page_token, [converters.state_from_pb(s) for s in request.states],
            request.owner, dict(request.labels), request.manager, visible_to=gate.current())
        return repository_pb2.ListWorkspacesResponse(workspaces=[ws_pb(w) for w in items], next_page_token=token)

    def WatchWorkspace(self, request, context):
        for workspace in self.workspaces.watch(request.name, context.is_active):
            yield repository_pb2.WatchWorkspaceResponse(workspace=ws_pb(workspace))

    def UpdateTerminationTime(self, request, context):
        change = request.WhichOneof("change")
        if change is None:
            raise errors.InvalidArgument("is missing; give termination_time or extend_by", "termination_time")
        workspace = self.lifetimes.update_termination_time(
            request.name, termination_time=converters.ts_from_pb(request, "termination_time"),
            extend_by=converters.duration_from_pb(request, "extend_by"))
        return repository_pb2.UpdateTerminationTimeResponse(workspace=ws_pb(workspace))

    def DeleteWorkspace(self, request, context):
        return repository_pb2.DeleteWorkspaceResponse(workspace=ws_pb(self.lifetimes.delete(request.name)))

    def ListWorkspaceEvents(self, request, context):
        items, token = self.workspaces.list_events(request.parent, request.page_size, request.page_token)
        return repository_pb2.ListWorkspaceEventsResponse(
            events=[converters.event_to_pb(e) for e in items], next_page_token=token)

    def CreateImage(self, request, context):
        caller = gate.current()
        owner = caller.identity if caller.principal is not None else request.owner
        image = self.images.create_image(request.image_id, converters.image_from_pb(request.image), owner,
                                         privileged=caller.privileged)
        return repository_pb2.CreateImageResponse(image=converters.image_to_pb(image))

    def GetImage(self, request, context):
        return repository_pb2.GetImageResponse(image=converters.image_to_pb(self.images.get_image(request.name)))

    def ListImages(self, request, context):
        caller = gate.current()
        owner = request.owner if caller.privileged else caller.identity  # others: public ones and their own
        items, token = self.images.list_images(owner, request.page_size, request.page_token)
        return repository_pb2.ListImagesResponse(images=[converters.image_to_pb(i) for i in items],
                                                 next_page_token=token)

    def DeleteImage(self, request, context):
        self.images.delete_image(request.name, by=gate.current())
        return repository_pb2.DeleteImageResponse()

    def RegisterManager(self, request, context):
        info = self.managers.register_manager(converters.manager_from_pb(request.manager),
                                             identity=gate.current().identity)
        return repository_pb2.RegisterManagerResponse(manager=converters.manager_to_pb(info))

    def HeartbeatManager(self, request, context):
        info = self.managers.heartbeat(request.name, converters.capacity_from_pb(request.allocated))
        return repository_pb2.HeartbeatManagerResponse(manager=converters.manager_to_pb(info))

    def ListManagers(self, request, context):
        items, token = self.managers.list_managers(request.page_size, request.page_token)
        return repository_pb2.ListManagersResponse(managers=[converters.manager_to_pb(m) for m in items],
                                                   next_page_token=token)

    def GetUsage(self, request, context):
        return repository_pb2.GetUsageResponse(usage=converters.usage_to_pb(self.usage.get_usage(request.name)))

    def ExportUsageRecords(self, request, context):
        caller = gate.current()
        if not caller.privileged and request.owner != caller.identity:
            raise errors.PermissionDenied(f"{caller.identity} may export only their own usage records; give "
                                          f"owner={caller.identity!r} (administrators may export anyone's)")
        xml, count = self.usage.export_usage_records(
            request.owner, converters.ts_from_pb(request, "start_time"), converters.ts_from_pb(request, "end_time"))
        return repository_pb2.ExportUsageRecordsResponse(usage_records_xml=xml, record_count=count)


class RecordServicer(record_pb2_grpc.RecordServiceServicer):
    def __init__(self, service: RepositoryService, authorizer: Authorizer | None = None):
        self.records, self.usage, self.access = service.records, service.usage, service.access
        self.policy, self.authorizer = service.policy, authorizer

    def AuthorizeCall(self, request, context):
        rule = gate.rule_for(f"/vws.v1.{request.action}")
        if rule is None or rule.who != "user":
            raise errors.InvalidArgument(f"{request.action!r} is not a method users call; give Service/Method",
                                         "action")
        if self.authorizer is None:  # plain text: no authentication here either
            return record_pb2.AuthorizeCallResponse(caller=caller_to_pb(gate.PLAIN_TEXT_CALLER))
        caller = self.authorizer.authorize(gate.Call(
            action=request.action, target=request.target, source=request.source,
            authorization=request.authorization, certificate=request.client_certificate,
            service=request.service or gate.current().identity), rule)
        answer = record_pb2.AuthorizeCallResponse(caller=caller_to_pb(caller))
        if request.action == "FactoryService/CreateWorkspace" and caller.principal is not None:
            answer.entitlement.CopyFrom(entitlement(self.policy, self.access, caller))
        return answer

    def AppendAuditEntry(self, request, context):
        # The service the entry names is taken as it says: only a verified vws service gets here.
        self.access.append(audit_entry_from_pb(request.entry, request.entry.service or gate.current().identity))
        return record_pb2.AppendAuditEntryResponse()

    def CreateWorkspaceRecord(self, request, context):
        workspace = converters.workspace_from_pb(request.workspace)
        if request.workspace.HasField("spec") and converters.kind_from_pb(request.workspace.spec.kind) is None:
            raise errors.InvalidArgument("is not a kind this repository knows", "workspace.spec.kind")
        caller = caller_from_pb(request.caller) if request.HasField("caller") else gate.PLAIN_TEXT_CALLER
        record, created = self.records.create_record_wire(request.request_id, workspace, caller=caller)
        return record_pb2.CreateWorkspaceRecordResponse(workspace=record, created=created)

    def AssignWorkspace(self, request, context):
        workspace = self.records.assign(request.name, converters.endpoint_from_pb(request.endpoint))
        return record_pb2.AssignWorkspaceResponse(workspace=ws_pb(workspace))

    def MoveWorkspace(self, request, context):
        workspace = self.records.move(request.name, request.source, converters.endpoint_from_pb(request.endpoint),
                                      request.message)
        return record_pb2.MoveWorkspaceResponse(workspace=ws_pb(workspace))

    def ReportWorkspaceState(self, request, context):
        workspace = self.records.report_state_wire(
            request.name, request.manager, converters.state_from_pb(request.state), request.message,
            converters.ts_from_pb(request, "change_time"), request.host_identity,
            converters.event_type_from_pb(request.event_type),
            converters.enforcement_from_pb(request.enforcement) if request.HasField("enforcement") else None)
        return record_pb2.ReportWorkspaceStateResponse(workspace=workspace)

    def DeleteWorkspaceRecord(self, request, context):
        self.records.delete_record(request.name, request.reason)
        return record_pb2.DeleteWorkspaceRecordResponse()

    def ReportWorkspaceProgress(self, request, context):
        self.records.report_progress(
            request.name, request.manager,
            converters.progress_from_pb(request.progress) if request.HasField("progress") else None)
        return record_pb2.ReportWorkspaceProgressResponse()

    def ReportUsage(self, request, context):
        accepted = self.usage.report_usage(request.manager, [converters.usage_from_pb(u, f"usage[{i}]")
                                                             for i, u in enumerate(request.usage)])
        return record_pb2.ReportUsageResponse(accepted=accepted)
