"""Bytes that are not the request message are the client's error: INVALID_ARGUMENT naming the
message, not gRPC's INTERNAL "Exception deserializing request!" (issue 17, item 11)."""
from __future__ import annotations

import grpc
import pytest

from vws.common.server import create_server
from vws.v1 import factory_pb2, factory_pb2_grpc

FACTORY = factory_pb2.DESCRIPTOR.services_by_name["FactoryService"].full_name
GARBAGE = b"\xff\xff\xff"


class _Factory(factory_pb2_grpc.FactoryServiceServicer):
    def CreateWorkspace(self, request, context):
        return factory_pb2.CreateWorkspaceResponse()


@pytest.fixture(scope="module")
def channel():
    def register(s):
        factory_pb2_grpc.add_FactoryServiceServicer_to_server(_Factory(), s)
        return [FACTORY]
    service = create_server("127.0.0.1:0", register, max_workers=2)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as ch:
        yield ch
    service.stop(0)


def _raw(data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("method, message", [
    (f"/{FACTORY}/CreateWorkspace", "vws.v1.CreateWorkspaceRequest"),
    ("/grpc.health.v1.Health/Check", "grpc.health.v1.HealthCheckRequest"),
])
def test_undecodable_unary_request(channel, method, message):
    call = channel.unary_unary(method, request_serializer=_raw, response_deserializer=_raw)
    with pytest.raises(grpc.RpcError) as e:
        call(GARBAGE, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert message in e.value.details()


@pytest.mark.parametrize("requests", [[GARBAGE], [b"", GARBAGE]], ids=["first", "later"])
def test_undecodable_streamed_request(channel, requests):
    call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                 request_serializer=_raw, response_deserializer=_raw)
    with pytest.raises(grpc.RpcError) as e:
        list(call(iter(requests), timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "grpc.reflection.v1alpha.ServerReflectionRequest" in e.value.details()


def test_a_valid_request_still_works(channel):
    call = channel.unary_unary(f"/{FACTORY}/CreateWorkspace", request_serializer=_raw, response_deserializer=_raw)
    assert call(factory_pb2.CreateWorkspaceRequest(request_id="r").SerializeToString(), timeout=10) == b""
