"""Whatever a client sends, the status it gets back stays small: a message under 1 KB, every
violation cut short, and names refused by their length before their form (issue 17, item 6)."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from vws.common import errors, names, server
from vws.common.server import create_server, status_for
from vws.v1 import factory_pb2, factory_pb2_grpc

HUGE = "k" * 20_000


def _details(status: grpc.Status) -> status_pb2.Status:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def _metadata_size(status: grpc.Status) -> int:
    return len(status.details.encode()) + sum(len(k) + len(v) for k, v in status.trailing_metadata)


def test_a_huge_message_and_violations_are_bounded():
    error = errors.InvalidArgument([(f"workspace.labels[{HUGE}]", f"{HUGE!r}: a label key is 1-63 characters")] * 50
                                   + [("workspace.spec.memory", "must be positive")])
    status = status_for(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(status.details.encode()) < 1024
    assert _metadata_size(status) < 4096  # gRPC's limit for all metadata is 8 KB
    sent = _details(status)
    assert sent.message == status.details
    request = error_details_pb2.BadRequest()
    sent.details[0].Unpack(request)
    assert 1 < len(request.field_violations) < 51
    for v in request.field_violations:
        assert len(v.field.encode()) <= server.FIELD_LIMIT and len(v.description.encode()) <= server.DESCRIPTION_LIMIT
    assert request.field_violations[0].field.startswith("workspace.labels[kkk")
    assert request.field_violations[0].field.endswith("…")
    assert request.field_violations[-1].description.startswith("and ")  # how many were left out
    assert status.details.startswith("workspace.labels[kkk")


@pytest.mark.parametrize("error", [
    errors.NotFound(f"workspace {HUGE} not found"),
    errors.ResourceExhausted(HUGE, [(HUGE, HUGE)] * 30),
    errors.FailedPrecondition("é" * 20_000),  # multi-byte characters are cut whole
])
def test_every_status_is_bounded(error):
    status = status_for(error)
    assert len(status.details.encode()) < 1024 and status.details.endswith("…")
    assert _metadata_size(status) < 4096


def test_a_small_error_is_sent_as_it_is():
    error = errors.InvalidArgument([("name", "is empty"), ("spec.memory", "must be positive")])
    status = status_for(error)
    assert status.details == "name: is empty; spec.memory: must be positive"
    request = error_details_pb2.BadRequest()
    _details(status).details[0].Unpack(request)
    assert [(v.field, v.description) for v in request.field_violations] == error.violations


class _Refusing(factory_pb2_grpc.FactoryServiceServicer):
    def CreateWorkspace(self, request, context):
        raise errors.InvalidArgument(f"{request.workspace.labels!r} is not a label set", "workspace.labels")


def test_a_client_gets_the_invalid_argument_meant_for_it():
    def register(s):
        factory_pb2_grpc.add_FactoryServiceServicer_to_server(_Refusing(), s)
        return [factory_pb2.DESCRIPTOR.services_by_name["FactoryService"].full_name]
    service = create_server("127.0.0.1:0", register, max_workers=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = factory_pb2_grpc.FactoryServiceStub(channel)
            request = factory_pb2.CreateWorkspaceRequest()
            request.workspace.labels[HUGE] = "v"
            with pytest.raises(grpc.RpcError) as e:
                stub.CreateWorkspace(request, timeout=10)
    finally:
        service.stop(0)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert len(e.value.details().encode()) < 1024


@pytest.mark.parametrize("parse, prefix, most", [
    (names.parse_workspace_name, "workspaces/", "WORKSPACE_NAME_MAX"),
    (names.parse_manager_name, "managers/", "MANAGER_NAME_MAX"),
    (names.parse_image_name, "images/", "IMAGE_NAME_MAX"),
])
def test_a_huge_name_is_refused_by_its_length(parse, prefix, most):
    most = getattr(names, most)
    with pytest.raises(errors.InvalidArgument) as e:
        parse(prefix + "a" * 20_000, "source")
    assert len(e.value.message) < 200 and e.value.violations[0][0] == "source"
    assert f"at most {most}" in e.value.message
    parse(prefix + "a" * (most - len(prefix)), "source")  # the longest name is accepted


def test_quote_echoes_a_short_prefix():
    assert errors.quote("abc") == "'abc'"
    assert errors.quote(HUGE) == repr("k" * 40) + "…"
