"""FactoryService: converts and calls the service layer."""
from __future__ import annotations

from ..common import converters, kinds
from ..common.auth import gate
from .service import WorkspaceFactory
from .validation import floors
from ..v1 import factory_pb2, factory_pb2_grpc, workspace_pb2


class FactoryServicer(factory_pb2_grpc.FactoryServiceServicer):
    def __init__(self, factory: WorkspaceFactory):
        self.factory = factory

    def CreateWorkspace(self, request, context):
        ws = converters.workspace_from_pb(request.workspace)
        raw_kind = request.workspace.spec.kind
        if raw_kind == workspace_pb2.WorkspaceSpec.KIND_UNSPECIFIED:
            ws.spec.kind = kinds.DEFAULT
        created = self.factory.create(request.request_id, ws, kind_known=ws.spec.kind is not None,
                                      caller=gate.current())
        return factory_pb2.CreateWorkspaceResponse(workspace=converters.workspace_to_pb(created),
                                                   endpoint=converters.endpoint_to_pb(created.endpoint))

    def GetSiteInfo(self, request, context):
        info = self.factory.site_info()
        limits = info["limits"]
        return factory_pb2.GetSiteInfoResponse(
            kinds=[factory_pb2.KindOffer(kind=converters.kind_to_pb(k), available=a, reason=r,
                                         min_resources=converters.resources_to_pb(floors(limits, k)))
                   for k, a, r in info["kinds"]],
            max_resources=converters.resources_to_pb(limits.maxima),
            default_resources=converters.resources_to_pb(limits.defaults),
            min_resources=converters.resources_to_pb(limits.minima),
            default_lifetime=converters.duration_to_pb(limits.default_lifetime),
            max_lifetime=converters.duration_to_pb(limits.max_lifetime),
            available_managers=info["available_managers"],
            repository_address=info["repository_address"])
