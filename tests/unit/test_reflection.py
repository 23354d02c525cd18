"""Every vws server answers gRPC reflection as v1 (what grpcurl and grpc-js tools ask first)
and as v1alpha (what older clients ask)."""
from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from vws.common.server import create_server
from vws.v1 import factory_pb2, factory_pb2_grpc

FACTORY = factory_pb2.DESCRIPTOR.services_by_name["FactoryService"].full_name


@pytest.fixture
def server():
    def register(s):
        factory_pb2_grpc.add_FactoryServiceServicer_to_server(factory_pb2_grpc.FactoryServiceServicer(), s)
        return [FACTORY]
    service = create_server("127.0.0.1:0", register, max_workers=2)
    yield service
    service.stop(0)


def _ask(port: int, version: str, request: reflection_pb2.ServerReflectionRequest):
    # v1 kept v1alpha's messages field for field, so v1alpha's classes speak v1 on the wire.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        return next(iter(call(iter([request]), timeout=10)))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_lists_the_services(server, version):
    answer = _ask(server.port, version, reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = {s.name for s in answer.list_services_response.service}
    assert {FACTORY, "grpc.health.v1.Health"} <= listed


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_describes_a_listed_service(server, version):
    answer = _ask(server.port, version, reflection_pb2.ServerReflectionRequest(file_containing_symbol=FACTORY))
    assert answer.file_descriptor_response.file_descriptor_proto, answer
