"""The repository's side of a create converts the workspace between protobuf and the domain
once each way: the request in, the record out to be stored; both answers (CreateWorkspaceRecord,
ReportWorkspaceState) are the stored wire message, not converted again."""
from __future__ import annotations

import collections

import pytest

from tests.unit.test_repository_service import ADDRESS, MANAGER, make_env, new_ws
from vws.common import converters, model
from vws.repository.servicer import RecordServicer
from vws.v1 import record_pb2, workspace_pb2


@pytest.fixture
def counted(monkeypatch):
    calls: collections.Counter = collections.Counter()
    for name in ("workspace_to_pb", "workspace_from_pb"):
        real = getattr(converters, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(converters, name, counting)
    return calls


def test_a_create_and_its_report_convert_the_workspace_once_each_way(tmp_path, counted):
    service, clock, _ = make_env(f"sqlite:///{tmp_path / 'repository.db'}")
    try:
        servicer = RecordServicer(service)
        ws = new_ws(clock)
        ws.endpoint = model.Endpoint(ws.name, MANAGER, ADDRESS)
        request = record_pb2.CreateWorkspaceRecordRequest(request_id="r1", workspace=converters.workspace_to_pb(ws))
        counted.clear()
        created = servicer.CreateWorkspaceRecord(request, None)
        assert created.created and created.workspace.state == workspace_pb2.Workspace.STATE_PENDING
        assert counted == {"workspace_from_pb": 1, "workspace_to_pb": 1}
        counted.clear()
        reported = servicer.ReportWorkspaceState(record_pb2.ReportWorkspaceStateRequest(
            name=ws.name, manager=MANAGER, state=workspace_pb2.Workspace.STATE_READY, message="ready"), None)
        assert reported.workspace.state == workspace_pb2.Workspace.STATE_READY
        assert sum(counted.values()) == 0
    finally:
        service.lifetimes.stop_expiry()
        service.uow.dispose()
