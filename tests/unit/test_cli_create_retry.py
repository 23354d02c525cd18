"""`vws create` always sends a request_id and retries UNAVAILABLE with the same one, a bounded
number of times with backoff, saying so on stderr (issue 17, item 9)."""
from __future__ import annotations

import time

import grpc
import pytest

from tests.unit.test_cli_modules import Failed
from vws.cli import main, workspaces
from vws.cli.connection import CliError
from vws.v1 import factory_pb2, workspace_pb2

W = workspace_pb2.Workspace


class FakeFactory:
    """Answers each CreateWorkspace with the next of `answers` (an error is raised)."""

    def __init__(self, *answers):
        self.answers, self.requests = list(answers), []

    def CreateWorkspace(self, request, timeout=None):
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def made() -> factory_pb2.CreateWorkspaceResponse:
    return factory_pb2.CreateWorkspaceResponse(workspace=W(name="workspaces/wabc", state=W.STATE_RUNNING))


@pytest.fixture
def create(monkeypatch):
    """Runs `vws create ARGS` over a fake factory: (exit code, the factory, the sleeps taken)."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)

    def run(factory: FakeFactory, *args: str):
        class Connection(workspaces.Connection):
            def factory(self):
                return factory
        monkeypatch.setattr(workspaces, "Connection", Connection)
        parsed = main.build_parser().parse_args(["--endpoint", "127.0.0.1:1", "create", *args])
        return workspaces.cmd_create(parsed), factory, slept
    return run


def test_every_create_carries_a_request_id(create):
    code, factory, _ = create(FakeFactory(made(), made()))
    assert code == 0
    create(factory)
    first, second = factory.requests
    assert first.request_id and second.request_id and first.request_id != second.request_id
    _, factory, _ = create(FakeFactory(made()), "--request-id", "mine")
    assert factory.requests[0].request_id == "mine"


def test_a_create_cut_off_unavailable_is_retried_with_the_same_request_id(create, capsys):
    down = Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    code, factory, slept = create(FakeFactory(down, down, made()))
    assert code == 0
    assert len({r.request_id for r in factory.requests}) == 1 and len(factory.requests) == 3
    assert factory.requests[0] == factory.requests[2]
    assert slept == [1.0, 2.0]
    err = capsys.readouterr().err
    assert f"retrying in 1s with the same request id {factory.requests[0].request_id} (attempt 2 of 4)" in err
    assert "attempt 3 of 4" in err


def test_retries_are_bounded_and_the_failure_says_how_to_find_the_create(create):
    down = Failed(grpc.StatusCode.UNAVAILABLE, "connection refused")
    factory = FakeFactory(*[down] * 10)
    with pytest.raises(CliError) as e:
        create(factory)
    assert len(factory.requests) == workspaces.CREATE_ATTEMPTS == 4
    assert "cannot reach the factory" in str(e.value) and e.value.code == 3
    assert f"--request-id {factory.requests[0].request_id}" in str(e.value)


def test_only_unavailable_is_retried(create, capsys):
    refused = Failed(grpc.StatusCode.INVALID_ARGUMENT, "memory: too much")
    with pytest.raises(grpc.RpcError):
        create(FakeFactory(refused, made()))
    late = Failed(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    factory = FakeFactory(late, made())
    with pytest.raises(grpc.RpcError):
        create(factory)
    assert len(factory.requests) == 1
    assert f"--request-id {factory.requests[0].request_id}" in capsys.readouterr().err
