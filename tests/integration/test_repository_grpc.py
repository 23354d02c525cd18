"""The real repository server on 127.0.0.1:0, called through the generated stubs, on SQLite
and PostgreSQL; a small fake ManagerService destroys workspaces and reports back as a real
manager does (from inside the DeleteWorkspace call)."""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import threading

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from vws.common import clients, config, converters, model
from vws.repository import server as repo_server
from vws.v1 import (manager_pb2, manager_pb2_grpc, record_pb2, repository_pb2, workspace_pb2)

MANAGER = "managers/fake-1"
State = workspace_pb2.Workspace.State


class FakeManager(manager_pb2_grpc.ManagerServiceServicer):
    def __init__(self):
        self.repository = ""
        self.destroyed: list[str] = []

    def DestroyWorkspace(self, request, context):
        self.destroyed.append(request.name)
        records = clients.records(self.repository)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        records.ReportWorkspaceState(record_pb2.ReportWorkspaceStateRequest(
            name=request.name, manager=MANAGER, state=State.STATE_TERMINATED, message="destroyed: " + request.reason,
            change_time=now, event_type=workspace_pb2.WorkspaceEvent.TYPE_STATE_CHANGED), timeout=5)
        return manager_pb2.DestroyWorkspaceResponse(
            workspace=workspace_pb2.Workspace(name=request.name, state=State.STATE_TERMINATED))


@pytest.fixture
def stack(database_url, tmp_path):
    fake = FakeManager()
    mserver = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    manager_pb2_grpc.add_ManagerServiceServicer_to_server(fake, mserver)
    mport = mserver.add_insecure_port("127.0.0.1:0")
    mserver.start()
    # The record semantics, in plain text (security has tests of its own); the fake manager has no TLS either.
    settings = config.RepositorySettings(data_dir=tmp_path, listen="127.0.0.1:0", database_url=database_url,
                                         expiry_interval=dt.timedelta(seconds=0.2), insecure=True)
    service, repo = repo_server.serve(settings)
    address = f"127.0.0.1:{service.port}"
    fake.repository = address
    yield clients.repository(address), clients.records(address), f"127.0.0.1:{mport}", fake, address
    service.stop(1)
    mserver.stop(0)


_n = iter(range(10**6))


def create(records, request_id="", owner="alice", labels=None, lifetime=dt.timedelta(hours=1)):
    ws = workspace_pb2.Workspace(
        name=f"workspaces/w{next(_n):06d}grpc", owner=owner, labels=labels or {},
        spec=workspace_pb2.WorkspaceSpec(kind=workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT),
        termination_time=converters.ts_to_pb(model.utcnow() + lifetime))
    return records.CreateWorkspaceRecord(record_pb2.CreateWorkspaceRecordRequest(request_id=request_id, workspace=ws))


def place(records, name, manager_address, state=State.STATE_RUNNING):
    records.AssignWorkspace(record_pb2.AssignWorkspaceRequest(
        name=name, endpoint=workspace_pb2.EndpointReference(workspace=name, manager=MANAGER,
                                                            manager_address=manager_address)))
    return records.ReportWorkspaceState(record_pb2.ReportWorkspaceStateRequest(
        name=name, manager=MANAGER, state=state, message="started",
        change_time=converters.ts_to_pb(model.utcnow()), host_identity="vws-acct")).workspace


def violations(exc: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(exc)
    out = []
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out += [v.field for v in br.field_violations]
    return out


def test_records_get_and_list(stack):
    repo, records, maddr, _, _ = stack
    first = create(records, "req-1", labels={"team": "a"})
    assert first.created and first.workspace.state == State.STATE_PENDING
    again = create(records, "req-1", labels={"team": "a"})
    assert not again.created
    with pytest.raises(grpc.RpcError) as e:
        create(records, "req-1", labels={"team": "b"})
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS and "req-1" in e.value.details()
    name = first.workspace.name
    got = repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name)).workspace
    assert got == first.workspace
    with pytest.raises(grpc.RpcError) as e:
        repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name="workspaces/wnothere1234"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name="nope"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(e.value) == ["name"]
    second = create(records, owner="bob").workspace
    place(records, second.name, maddr)
    listed = repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(page_size=1))
    assert [w.name for w in listed.workspaces] == [second.name] and listed.next_page_token
    rest = repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(page_size=1, page_token=listed.next_page_token))
    assert [w.name for w in rest.workspaces] == [name] and not rest.next_page_token
    assert [w.name for w in repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        labels={"team": "a"})).workspaces] == [name]
    assert [w.name for w in repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        manager=MANAGER, states=[State.STATE_RUNNING])).workspaces] == [second.name]
    for request in (repository_pb2.ListWorkspacesRequest(page_size=-1),
                    repository_pb2.ListWorkspacesRequest(page_token="garbage"),
                    repository_pb2.ListWorkspacesRequest(page_token=listed.next_page_token, owner="carol")):
        with pytest.raises(grpc.RpcError) as e:
            repo.ListWorkspaces(request)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(e.value) == ["page_size" if request.page_size else "page_token"]


def test_watch_termination_time_delete_and_events(stack):
    repo, records, maddr, fake, _ = stack
    ws = create(records).workspace
    place(records, ws.name, maddr)
    stream = repo.WatchWorkspace(repository_pb2.WatchWorkspaceRequest(name=ws.name), timeout=30)
    seen = []
    first = threading.Event()

    def consume():
        for resp in stream:
            seen.append(resp.workspace)
            first.set()
    t = threading.Thread(target=consume)
    t.start()
    assert first.wait(10)

    extended = repo.UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(
        name=ws.name, extend_by=duration_pb2.Duration(seconds=3600))).workspace
    assert extended.termination_time.seconds == ws.termination_time.seconds + 3600
    with pytest.raises(grpc.RpcError) as e:
        repo.UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(
            name=ws.name, termination_time=converters.ts_to_pb(model.utcnow() + dt.timedelta(days=30))))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(e.value) == ["termination_time"]
    assert "maximum" in e.value.details()

    deleted = repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name)).workspace
    assert deleted.state == State.STATE_TERMINATED and fake.destroyed == [ws.name]
    t.join(10)
    assert not t.is_alive()
    assert seen[0].state == State.STATE_RUNNING and seen[-1].state == State.STATE_TERMINATED
    with pytest.raises(grpc.RpcError) as e:
        repo.UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(
            name=ws.name, extend_by=duration_pb2.Duration(seconds=60)))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    events = repo.ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(parent=ws.name, page_size=3))
    assert len(events.events) == 3 and events.next_page_token
    more = repo.ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(
        parent=ws.name, page_size=100, page_token=events.next_page_token))
    types = [e.type for e in list(events.events) + list(more.events)]
    T = workspace_pb2.WorkspaceEvent
    assert types[:3] == [T.TYPE_CREATED, T.TYPE_PLACED, T.TYPE_STATE_CHANGED]
    assert T.TYPE_TERMINATION_TIME_CHANGED in types and more.events[-1].state == State.STATE_TERMINATED


def test_delete_with_manager_unreachable_stays_terminating(stack):
    repo, records, _, _, _ = stack
    ws = create(records).workspace
    with socket_closed_port() as port:
        place(records, ws.name, f"127.0.0.1:{port}")
        got = repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name), timeout=30).workspace
    assert got.state == State.STATE_TERMINATING


def test_expiry_loop_destroys_ended_workspaces(stack):
    repo, records, maddr, fake, _ = stack
    ws = create(records, lifetime=dt.timedelta(seconds=1)).workspace
    place(records, ws.name, maddr)
    stream = repo.WatchWorkspace(repository_pb2.WatchWorkspaceRequest(name=ws.name), timeout=20)
    states = [r.workspace.state for r in stream]
    assert states[-1] == State.STATE_TERMINATED and fake.destroyed == [ws.name]


def test_managers(stack):
    repo, _, _, _, _ = stack
    with pytest.raises(grpc.RpcError) as e:
        repo.HeartbeatManager(repository_pb2.HeartbeatManagerRequest(name=MANAGER))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    info = model.ManagerInfo(name=MANAGER, address="127.0.0.1:9", kinds=[model.Kind.UNIX_ACCOUNT],
                             backend="dynamic-accounts", capacity=model.Capacity(workspaces=4))
    reg = repo.RegisterManager(repository_pb2.RegisterManagerRequest(manager=converters.manager_to_pb(info))).manager
    assert reg.state == workspace_pb2.Manager.STATE_AVAILABLE
    beat = repo.HeartbeatManager(repository_pb2.HeartbeatManagerRequest(
        name=MANAGER, allocated=workspace_pb2.Capacity(workspaces=1))).manager
    assert beat.allocated.workspaces == 1
    listed = repo.ListManagers(repository_pb2.ListManagersRequest()).managers
    assert [m.name for m in listed] == [MANAGER] and listed[0].capacity.workspaces == 4
    with pytest.raises(grpc.RpcError) as e:
        repo.RegisterManager(repository_pb2.RegisterManagerRequest(manager=workspace_pb2.Manager(name="x")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(e.value) == ["manager.name"]


def test_manager_gateway_against_the_repository(stack):
    """The repository client the managers use (vws.repository.client) works against this server."""
    from vws.repository.client import RepositoryClient
    from vws.manager.state import Report
    _, records, maddr, _, address = stack
    gw = RepositoryClient(address)
    assert gw.heartbeat(MANAGER, model.Capacity()) is False
    gw.register(model.ManagerInfo(name=MANAGER, address=maddr))
    assert gw.heartbeat(MANAGER, model.Capacity(workspaces=1)) is True
    ws = create(records).workspace
    place(records, ws.name, maddr)
    gw.report(MANAGER, Report(1, ws.name, model.State.PAUSED, "paused", model.utcnow(), "vws-acct",
                              model.EventType.STATE_CHANGED))
    assert [w.name for w in gw.workspaces_on(MANAGER)] == [ws.name]
    assert gw.get(ws.name).state is model.State.PAUSED
    assert gw.get("workspaces/wnothere1234") is None


class socket_closed_port:
    def __enter__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


def test_report_usage_names_each_bad_figure_by_its_place_in_the_request(stack):
    _, records, maddr, _, _ = stack
    ws = create(records).workspace
    place(records, ws.name, maddr)

    def report(*usage):
        with pytest.raises(grpc.RpcError) as e:
            records.ReportUsage(record_pb2.ReportUsageRequest(manager=MANAGER, usage=usage), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        return violations(e.value)
    good = workspace_pb2.WorkspaceUsage(name=ws.name, cpu_seconds=1.5, samples=2)
    assert report(good, good, good, workspace_pb2.WorkspaceUsage(
        name=ws.name, start_time=timestamp_pb2.Timestamp(seconds=1, nanos=1_000_000_000))) == ["usage[3].start_time"]
    assert report(good, workspace_pb2.WorkspaceUsage(name=ws.name, cpu_seconds=float("nan"), oom_kills=-1),
                  good, workspace_pb2.WorkspaceUsage(name=ws.name, memory_byte_seconds=float("inf"))) == [
        "usage[1].cpu_seconds", "usage[1].oom_kills", "usage[3].memory_byte_seconds"]
    assert records.ReportUsage(record_pb2.ReportUsageRequest(manager=MANAGER, usage=[good]), timeout=10).accepted == 1


def test_extending_a_termination_time_near_the_end_of_time_is_invalid_argument_not_internal(stack):
    """A record's termination time may lie in year 9999 (the factory's to set): an extension that
    would pass datetime's range is refused naming extend_by and the most it may be."""
    repo, records, _, _, _ = stack
    latest = create(records, lifetime=dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.timezone.utc) - model.utcnow()
                    ).workspace
    ordinary = create(records).workspace
    for ws, extend_by in ((latest, 60), (latest, converters.MAX_DURATION_SECONDS), (ordinary, 10 ** 9)):
        with pytest.raises(grpc.RpcError) as e:
            repo.UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(
                name=ws.name, extend_by=duration_pb2.Duration(seconds=extend_by)), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
        assert violations(e.value) == ["extend_by"] and "at most" in e.value.details()
    assert repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=latest.name)).workspace.termination_time == \
        latest.termination_time


def test_the_factorys_resume_loop_drives_on_creates_a_manager_had_taken(stack):
    """Cut short by a factory crash after its manager took it: PROPAGATING, or FAILED by that
    manager's own crash (nothing on the host). The resume loop, over this repository, drives each
    on as a retry would; a FAILED workspace that was made once is its owner's to destroy (issue 17)."""
    from vws.common.config import FactorySettings
    from vws.factory.service import WorkspaceFactory
    from vws.factory.validation import Limits
    from vws.repository.client import RepositoryClient
    repo, records, maddr, _, address = stack
    gw = RepositoryClient(address)
    gw.register(model.ManagerInfo(name=MANAGER, address=maddr, kinds=[model.Kind.UNIX_ACCOUNT],
                                  capacity=model.Capacity(workspaces=8)))

    def reported(name, state, host_identity=""):
        records.ReportWorkspaceState(record_pb2.ReportWorkspaceStateRequest(
            name=name, manager=MANAGER, state=state, message="as the manager found it", host_identity=host_identity,
            change_time=converters.ts_to_pb(model.utcnow())), timeout=10)
    cut_short = []
    for request_id, state in (("req-propagating", State.STATE_PROPAGATING), ("req-failed", State.STATE_FAILED)):
        name = create(records, request_id).workspace.name
        records.AssignWorkspace(record_pb2.AssignWorkspaceRequest(name=name, endpoint=workspace_pb2.EndpointReference(
            workspace=name, manager=MANAGER, manager_address=maddr)), timeout=10)
        reported(name, state)
        cut_short.append(name)
    made_once = create(records, "req-vanished").workspace.name
    place(records, made_once, maddr)
    reported(made_once, State.STATE_FAILED, "vws-acct")

    class Managers:  # the manager deploys it again, as after its reconcile
        def deploy(self, address, workspace):
            reported(workspace.name, State.STATE_RUNNING, "vws-again")
            return gw.get(workspace.name)
    later = model.utcnow() + dt.timedelta(hours=1)  # no factory can still be waiting for these deploys
    factory = WorkspaceFactory(Limits.from_settings(FactorySettings()), gw, Managers(), clock=lambda: later)
    assert sorted(factory.resume_once(dt.timedelta(seconds=30))) == sorted(cut_short)
    assert [gw.get(n).state for n in cut_short] == [model.State.RUNNING] * 2
    assert gw.get(made_once).state is model.State.FAILED


def test_a_record_its_manager_made_is_not_placed_on_another(stack):
    """Found by the chaos suite: a manager killed after its deploy but before the factory heard
    the answer; the factory placed the workspace on the next manager as well, and two managers
    realised it."""
    repo, records, maddr, _, _ = stack
    name = create(records, "req-made-once").workspace.name
    place(records, name, maddr, State.STATE_READY)
    with pytest.raises(grpc.RpcError) as e:
        records.AssignWorkspace(record_pb2.AssignWorkspaceRequest(name=name, endpoint=workspace_pb2.EndpointReference(
            workspace=name, manager="managers/other", manager_address="127.0.0.1:1")), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
    assert "READY on " + MANAGER in e.value.details()
    assert repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name)).workspace.endpoint.manager == MANAGER
