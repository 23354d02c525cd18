"""Calling a vws service (vws.common.clients): the paging helper, and gRPC errors raised as
domain errors that keep their details, so a service passing one on answers as its peer did."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from vws.common import clients, errors
from vws.common.server import status_for
from vws.v1 import repository_pb2, workspace_pb2


class Refused(grpc.RpcError):
    """What a gRPC stub raises, with the status details a vws server sends."""

    def __init__(self, status: grpc.Status):
        self.status = status

    def code(self):
        return self.status.code

    def details(self):
        return self.status.details

    def trailing_metadata(self):
        return self.status.trailing_metadata


def pages_of(names: list[str], size: int):
    asked = []

    def rpc(request, timeout):
        asked.append((request.page_token, request.page_size, timeout))
        start = int(request.page_token or 0)
        end = start + size
        return repository_pb2.ListManagersResponse(
            managers=[workspace_pb2.Manager(name=n) for n in names[start:end]],
            next_page_token=str(end) if end < len(names) else "")
    return rpc, asked


def test_listed_reads_every_page_in_order():
    rpc, asked = pages_of([f"managers/m{i}" for i in range(5)], 2)
    got = [m.name for m in clients.listed(rpc, repository_pb2.ListManagersRequest(), "managers")]
    assert got == [f"managers/m{i}" for i in range(5)]
    assert asked == [("", clients.PAGE_SIZE, clients.TIMEOUT), ("2", clients.PAGE_SIZE, clients.TIMEOUT),
                     ("4", clients.PAGE_SIZE, clients.TIMEOUT)]


@pytest.mark.parametrize("error", [
    errors.InvalidArgument([("workspace.spec.kind", "is wrong; use vm"), ("workspace.name", "is output only")]),
    errors.ResourceExhausted("no room", [("managers/a", "full"), ("managers/b", "memory")]),
    errors.NotFound("workspaces/x is not there"),
    errors.DeadlineExceeded("too slow"),
])
def test_a_refusal_becomes_its_domain_error_with_its_details(error):
    def rpc(request, timeout):
        raise Refused(status_for(error))
    with pytest.raises(errors.VwsError) as e:
        clients.call(rpc, repository_pb2.GetWorkspaceRequest())
    assert type(e.value) is type(error) and e.value.message == error.message
    assert getattr(e.value, "violations", None) == getattr(error, "violations", None)
    assert status_for(e.value).trailing_metadata == status_for(error).trailing_metadata  # passed on unchanged


def test_details_of_another_shape_are_left_alone():
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.RetryInfo())
    status = grpc.Status()
    status.code, status.details = grpc.StatusCode.INVALID_ARGUMENT, "bad"
    status.trailing_metadata = (("grpc-status-details-bin",
                                 status_pb2.Status(code=3, message="bad", details=[packed]).SerializeToString()),)
    assert errors.from_rpc_error(Refused(status)).violations == [("", "bad")]
    status.trailing_metadata = (("grpc-status-details-bin", b"\xff not a status"),)
    assert errors.from_rpc_error(Refused(status)).violations == [("", "bad")]


def test_unreachable_covers_what_a_retry_may_cure():
    for error in (errors.Unavailable("down"), errors.DeadlineExceeded("slow"), errors.Cancelled("gone")):
        assert isinstance(error, clients.UNREACHABLE)
    assert not isinstance(errors.NotFound("x"), clients.UNREACHABLE)

