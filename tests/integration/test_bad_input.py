"""Bad input through a real stack gets the INVALID_ARGUMENT meant for it, in a message under
1 KB, however much the client sent (issue 17, item 6)."""
from __future__ import annotations

import grpc
import pytest

from vws.common import clients
from vws.v1 import factory_pb2, repository_pb2, workspace_pb2

HUGE = "k" * 20_000


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert len(e.value.details().encode()) < 1024
    return e.value


def test_huge_input_is_answered_invalid_argument(stack_factory):
    stack = stack_factory(managers=0)  # both refusals come before anything reaches a manager
    repository = clients.repository(stack.repository.address)
    refused = _refusal(lambda: repository.GetWorkspace(
        repository_pb2.GetWorkspaceRequest(name="workspaces/" + HUGE), timeout=30))
    assert "name" in refused.details() and "at most 42" in refused.details()

    request = factory_pb2.CreateWorkspaceRequest(request_id=f"r-{stack.tag}-huge", workspace=workspace_pb2.Workspace(
        labels={HUGE: "v", "team": HUGE}))
    refused = _refusal(lambda: clients.factory(stack.factory.address).CreateWorkspace(request, timeout=30))
    assert "workspace.labels[" in refused.details()


def test_undecodable_bytes_are_answered_invalid_argument(stack):
    """Through TLS and the gate, a unary and a streamed request (issue 17, item 11)."""
    def raw(data: bytes) -> bytes:
        return data
    garbage = b"\xff\xff\xff"
    get = clients.channel(stack.repository.address).unary_unary(
        "/vws.v1.RepositoryService/GetWorkspace", request_serializer=raw, response_deserializer=raw)
    refused = _refusal(lambda: get(garbage, timeout=30))
    assert "is not a valid vws.v1.GetWorkspaceRequest" in refused.details()
    execute = clients.channel(stack.managers["m0"].address).stream_stream(
        "/vws.v1.ManagerService/Exec", request_serializer=raw, response_deserializer=raw)
    refused = _refusal(lambda: list(execute(iter([garbage]), timeout=30)))
    assert "is not a valid vws.v1.ExecRequest" in refused.details()
