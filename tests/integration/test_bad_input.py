"""Bad input through a real stack answers INVALID_ARGUMENT naming the field, in a message under
1 KB however much the client sent, never INTERNAL (issue 17)."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from tests.integration.test_workspaces import create, get, repo, run, violations
from vws.common import clients
from vws.v1 import factory_pb2, repository_pb2, workspace_pb2

HUGE = "k" * 20_000
LARGEST_DURATION = 315_576_000_000  # google.protobuf.Duration's own bound, 10,000 years


def test_times_and_durations_out_of_range_are_invalid_arguments(stack):
    ws = create(stack, lifetime=duration_pb2.Duration(seconds=3600)).workspace
    for change in (dict(extend_by=duration_pb2.Duration(seconds=2 ** 63 - 1)),
                   dict(extend_by=duration_pb2.Duration(seconds=LARGEST_DURATION, nanos=999_999_999)),
                   dict(termination_time=timestamp_pb2.Timestamp(seconds=1, nanos=1_000_000_000))):
        with pytest.raises(grpc.RpcError) as e:
            repo(stack).UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(name=ws.name, **change),
                                              timeout=10)
        field = next(iter(change))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert "out of range" in violations(e.value)[field]
    assert get(stack, ws.name).termination_time == ws.termination_time
    with pytest.raises(grpc.RpcError) as e:
        create(stack, lifetime=duration_pb2.Duration(seconds=-2 ** 63))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert "out of range" in violations(e.value)["workspace.spec.lifetime"]
    assert stack.accounts() == [ws.endpoint.host_identity]


def test_exec_arguments_the_kernel_would_refuse_are_invalid_arguments(stack):
    from vws.manager.exec_limits import MAX_STRING_BYTES, MAX_TOTAL_BYTES
    ws = create(stack).workspace
    for argv, env, cwd, field in ((["/bin/echo", "a\0b"], {}, "", "argv[1]"),
                                  (["/bin/echo", "y" * 200_000], {}, "", "argv[1]"),
                                  (["/bin/echo"] + ["y" * 100_000] * (MAX_TOTAL_BYTES // 100_000 + 1), {}, "", "argv"),
                                  (["/bin/echo"], {"A": "x\0y"}, "", "environment[A]"),
                                  (["/bin/echo"], {"BIG": "y" * (MAX_STRING_BYTES + 1)}, "", "environment[BIG]"),
                                  (["/bin/echo"], {}, "tmp\0", "working_directory")):
        with pytest.raises(grpc.RpcError) as e:
            run(stack, ws, argv, env=env, cwd=cwd)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert field in violations(e.value), e.value.details()
    assert run(stack, ws, ["/bin/echo"] + ["y" * 1000] * 200) == (0, " ".join(["y" * 1000] * 200) + "\n", "")


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


def test_a_huge_label_key_is_refused_by_its_length_naming_the_labels(stack_factory):
    """Checked before its form, and quoted by a short prefix: the answer names `workspace.labels`
    and the maximum, not a field path cut short in the middle of the key."""
    stack = stack_factory(managers=0)
    request = factory_pb2.CreateWorkspaceRequest(request_id=f"r-{stack.tag}-key", workspace=workspace_pb2.Workspace(
        labels={HUGE: "v"}))
    refused = _refusal(lambda: clients.factory(stack.factory.address).CreateWorkspace(request, timeout=30))
    described = violations(refused)["workspace.labels"]
    assert "20000 characters" in described and "at most 63" in described and len(described) < 200
