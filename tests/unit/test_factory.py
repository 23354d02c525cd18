"""The factory's service layer over fake repository and manager gateways."""
from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
import pytest

from vws.common import errors, model
from vws.common.config import FactorySettings
from vws.factory.service import StillDeploying, WorkspaceFactory, rank, shortfall
from vws.factory.validation import Limits, admit

GiB = 1024 ** 3


class FakeRecords:
    def __init__(self, managers):
        self.records: dict[str, model.Workspace] = {}
        self.by_request: dict[str, str] = {}
        self._managers = managers
        self.deleted: list[str] = []
        self.counter = 0

    def create_record(self, request_id, workspace, caller=None):
        if request_id in self.by_request:
            return self.records[self.by_request[request_id]], False
        self.counter += 1
        ws = dataclasses.replace(workspace, name=f"workspaces/w{self.counter:011d}")
        self.records[ws.name] = ws
        self.by_request[request_id] = ws.name
        return ws, True

    def assign(self, name, endpoint):
        ws = self.records[name]
        if ws.endpoint.manager and ws.endpoint.manager != endpoint.manager and ws.state not in (
                model.State.PENDING, model.State.PROPAGATING):
            raise errors.FailedPrecondition(f"{name} is {ws.state.value} on {ws.endpoint.manager}")  # as the repository
        ws.endpoint = endpoint
        return ws

    def delete_record(self, name, reason):
        ws = self.records.pop(name)
        self.by_request.pop(ws.request_id, None)
        self.deleted.append(name)

    def managers(self):
        return [dataclasses.replace(m) for m in self._managers]

    def unfinished(self):
        return [w for w in self.records.values() if w.state in model.UNFINISHED]

    def get(self, name):
        return self.records[name]


class FakeManagers:
    def __init__(self, records: FakeRecords, refuse: dict[str, grpc.StatusCode] | None = None):
        self.records, self.refuse, self.calls = records, refuse or {}, []
        self.destroyed: list[tuple[str, str]] = []

    def destroy(self, address, name, reason):
        if address in self.refuse:
            raise errors.for_status(self.refuse[address], f"{address} says no")
        self.destroyed.append((address, name))
        return model.Workspace(name=name, spec=model.WorkspaceSpec(), state=model.State.TERMINATED)

    def deploy(self, address, workspace):
        self.calls.append(address)
        if address in self.refuse:
            raise errors.for_status(self.refuse[address], f"{address} says no")  # as the gRPC client raises it
        ws = self.records.records[workspace.name]
        ws.state = model.State.RUNNING
        ws.endpoint = dataclasses.replace(workspace.endpoint, host_identity="vws-" + workspace.name[11:])
        return dataclasses.replace(ws)


def manager(name, free=4, kinds=(model.Kind.UNIX_ACCOUNT,), state=model.ManagerState.AVAILABLE, memory=0):
    return model.ManagerInfo(name=f"managers/{name}", address=f"{name}:1", kinds=list(kinds),
                             capacity=model.Capacity(8, memory, 0, 0),
                             allocated=model.Capacity(8 - free, 0, 0, 0), state=state)


@pytest.fixture
def limits():
    return Limits.from_settings(FactorySettings())


def make(limits, managers, refuse=None):
    records = FakeRecords(managers)
    mgrs = FakeManagers(records, refuse)
    return WorkspaceFactory(limits, records, mgrs), records, mgrs


def ws(**spec):
    return model.Workspace(name="", spec=model.WorkspaceSpec(**spec), owner="alice")


def test_create_fills_defaults_places_and_returns_endpoint(limits):
    f, records, mgrs = make(limits, [manager("a")])
    out = f.create("req-1", ws())
    assert out.state is model.State.RUNNING
    assert out.endpoint.manager == "managers/a" and out.endpoint.workspace == out.name
    stored = records.records[out.name]
    assert stored.spec.resources.memory_bytes == limits.defaults.memory_bytes
    assert stored.spec.lifetime == limits.default_lifetime
    assert stored.termination_time - stored.create_time == limits.default_lifetime


def test_same_request_id_never_makes_a_second_workspace(limits):
    f, records, mgrs = make(limits, [manager("a")])
    first = f.create("req-1", ws())
    again = f.create("req-1", ws())
    assert again.name == first.name and len(records.records) == 1 and mgrs.calls == ["a:1"]


def test_a_pending_record_from_an_interrupted_create_is_driven_on_by_the_retry(limits):
    f, records, mgrs = make(limits, [manager("a")])
    records.create_record("req-1", dataclasses.replace(ws(), request_id="req-1"))
    out = f.create("req-1", ws())
    assert out.state is model.State.RUNNING and len(records.records) == 1


def failed_on(records, manager_name, request_id="req-1"):
    """The record of a create whose manager died mid-deploy and undid it at its restart."""
    record, _ = records.create_record(request_id, dataclasses.replace(ws(), request_id=request_id))
    record.state, record.state_message = model.State.FAILED, "the manager stopped during deploy"
    record.endpoint = model.Endpoint(record.name, f"managers/{manager_name}", f"{manager_name}:1")
    return record


def test_a_retried_create_whose_manager_died_mid_deploy_is_deployed_again_by_that_manager(limits):
    f, records, mgrs = make(limits, [manager("a"), manager("b", free=8)])
    record = failed_on(records, "a")
    out = f.create("req-1", ws())
    assert out.name == record.name and out.state is model.State.RUNNING and mgrs.calls == ["a:1"]
    assert len(records.records) == 1


def test_a_retried_failed_create_whose_manager_is_away_is_unavailable_and_stays_on_record(limits):
    f, records, mgrs = make(limits, [manager("a"), manager("b", free=8)], refuse={"a:1": grpc.StatusCode.UNAVAILABLE})
    record = failed_on(records, "a")
    with pytest.raises(errors.Unavailable, match="retry later with the same request_id"):
        f.create("req-1", ws())
    assert mgrs.calls == ["a:1"] and records.deleted == [] and record.endpoint.manager == "managers/a"


def test_a_create_is_never_answered_ok_with_a_failed_workspace(limits):
    f, records, mgrs = make(limits, [manager("a")])
    failed_on(records, "a")

    def deploy(address, workspace):  # a manager that answers with what it holds, FAILED
        mgrs.calls.append(address)
        return dataclasses.replace(records.records[workspace.name])
    mgrs.deploy = deploy
    with pytest.raises(errors.FailedPrecondition, match="destroy it and create it anew"):
        f.create("req-1", ws())


def test_a_set_up_script_past_the_managers_limit_is_deadline_exceeded_and_no_other_manager_runs_it(limits):
    f, records, mgrs = make(limits, [manager("a", free=8), manager("b")],
                            refuse={"a:1": grpc.StatusCode.DEADLINE_EXCEEDED})
    with pytest.raises(errors.DeadlineExceeded, match="a:1 says no"):
        f.create("req-1", ws())
    assert mgrs.calls == ["a:1"] and records.records == {} and len(records.deleted) == 1


def test_a_deploy_outlasting_the_factorys_wait_keeps_its_record_for_the_manager_to_finish_into(limits):
    f, records, mgrs = make(limits, [manager("a", free=8), manager("b")])
    finish = mgrs.deploy

    def slow(address, workspace):
        mgrs.deploy = finish  # the manager finishes later: the next ask answers with it
        raise StillDeploying(f"the manager at {address} was still deploying {workspace.name} after 300s")
    mgrs.deploy = slow
    with pytest.raises(errors.DeadlineExceeded, match="retry with the same request_id") as e:
        f.create("req-1", ws())
    assert not isinstance(e.value, StillDeploying) and records.deleted == [] and len(records.records) == 1
    out = f.create("req-1", ws())
    assert out.state is model.State.RUNNING and out.endpoint.manager == "managers/a" and mgrs.calls == ["a:1"]
    mgrs.deploy = slow
    with pytest.raises(errors.DeadlineExceeded, match="sent without a request_id, .* is undone"):
        f.create("", ws())  # no retry could find it: the resume loop undoes it


def test_the_gateway_tells_its_own_deadline_from_the_managers_answer(monkeypatch):
    import time
    from vws.factory import gateway
    monkeypatch.setattr(gateway, "DEPLOY_TIMEOUT", 0.05)
    monkeypatch.setattr(gateway.clients, "manager", lambda address: type("Stub", (), {"DeployWorkspace": None}))
    target = model.Workspace(name="workspaces/wabcdefghijk", spec=model.WorkspaceSpec())

    def answers(after):
        def call(rpc, request, timeout):
            time.sleep(after)
            raise errors.DeadlineExceeded("setup_script: still running after 2s")
        return call
    monkeypatch.setattr(gateway.clients, "call", answers(0))
    with pytest.raises(errors.DeadlineExceeded) as e:
        gateway.GrpcManagers().deploy("a:1", target)
    assert not isinstance(e.value, StillDeploying)
    monkeypatch.setattr(gateway.clients, "call", answers(0.06))
    with pytest.raises(StillDeploying, match="still deploying workspaces/wabcdefghijk"):
        gateway.GrpcManagers().deploy("a:1", target)


def test_placement_skips_full_and_silent_managers_and_spreads_load(limits):
    f, _, mgrs = make(limits, [manager("full", free=0), manager("gone", state=model.ManagerState.UNREACHABLE),
                               manager("busy", free=1), manager("idle", free=7)])
    f.create("r", ws())
    assert mgrs.calls == ["idle:1"]


def test_next_manager_is_tried_when_one_refuses(limits):
    f, records, mgrs = make(limits, [manager("a", free=8), manager("b", free=2)],
                            refuse={"a:1": grpc.StatusCode.RESOURCE_EXHAUSTED})
    out = f.create("r", ws())
    assert mgrs.calls == ["a:1", "b:1"] and out.endpoint.manager == "managers/b"


def test_no_room_anywhere_is_resource_exhausted_with_one_violation_per_manager_and_no_record(limits):
    f, records, _ = make(limits, [manager("a", free=0), manager("b", memory=GiB)])
    with pytest.raises(errors.ResourceExhausted) as e:
        f.create("r", ws(resources=model.Resources(memory_bytes=2 * GiB)))
    assert {s for s, _ in e.value.violations} == {"managers/a", "managers/b"}
    assert "memory" in dict(e.value.violations)["managers/b"]
    assert records.records == {}


def test_no_manager_at_all_says_so(limits):
    f, records, _ = make(limits, [])
    with pytest.raises(errors.ResourceExhausted, match="no manager has registered"):
        f.create("r", ws())
    assert records.records == {}


def test_a_manager_error_that_is_not_about_room_removes_the_record_and_reaches_the_client(limits):
    f, records, mgrs = make(limits, [manager("a"), manager("b")], refuse={"a:1": grpc.StatusCode.INVALID_ARGUMENT,
                                                                          "b:1": grpc.StatusCode.INVALID_ARGUMENT})
    with pytest.raises(errors.InvalidArgument, match="a:1 says no"):
        f.create("r", ws(software=model.Software(setup_script="exit 3")))
    assert records.records == {} and len(mgrs.calls) == 1


@pytest.mark.parametrize("field,spec,match", [
    ("workspace.spec.resources.memory_bytes", dict(resources=model.Resources(memory_bytes=-1)), "negative"),
    ("workspace.spec.resources.disk_bytes", dict(resources=model.Resources(disk_bytes=10 ** 18)), "maximum"),
    ("workspace.spec.resources.cpu_millis", dict(resources=model.Resources(cpu_millis=10 ** 9)), "maximum"),
    ("workspace.spec.resources.network_bits_per_second",
     dict(resources=model.Resources(network_bits_per_second=-5)), "negative"),
    ("workspace.spec.lifetime", dict(lifetime=dt.timedelta(days=100)), "maximum"),
    ("workspace.spec.lifetime", dict(lifetime=dt.timedelta(seconds=-3)), "negative"),
    ("workspace.spec.kind", dict(kind=None), "kind"),
    ("workspace.spec.software.environment[1BAD]", dict(software=model.Software(environment={"1BAD": "x"})),
     "variable name"),
    ("workspace.spec.software.files[0].path", dict(software=model.Software(
        files=[model.StagedFile("../etc/passwd", b"x")])), "relative"),
    ("workspace.spec.software.files[0].mode", dict(software=model.Software(
        files=[model.StagedFile("a", b"x", 0o4755)])), "set-uid"),
    ("workspace.spec.software.image", dict(software=model.Software(image="debian")), "virtual-machine"),
])
def test_every_bad_field_is_named(limits, field, spec, match):
    with pytest.raises(errors.InvalidArgument) as e:
        admit(ws(**spec), limits)
    fields = dict(e.value.violations)
    assert field in fields, e.value.violations
    assert match in fields[field]


def test_bad_labels_name_and_request_id_are_refused(limits):
    f, records, _ = make(limits, [manager("a")])
    bad = dataclasses.replace(ws(), labels={"Bad Key": "x", "ok": "NOT OK"}, name="workspaces/x")
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r", bad)
    fields = {f for f, _ in e.value.violations}
    assert fields == {"workspace.labels[Bad Key]", "workspace.labels[ok]", "workspace.name"}
    with pytest.raises(errors.InvalidArgument, match="request_id"):
        f.create("no spaces allowed", ws())
    assert records.records == {}


def test_all_violations_come_in_one_answer(limits):
    with pytest.raises(errors.InvalidArgument) as e:
        admit(ws(resources=model.Resources(memory_bytes=-1, cpu_millis=-1)), limits)
    assert len(e.value.violations) == 2


def test_kinds_not_yet_built_are_unimplemented(limits, monkeypatch):
    from vws.common import kinds
    monkeypatch.delitem(kinds.TABLE, model.Kind.SANDBOX)  # a kind of the contract no plug-in realises yet
    f, records, _ = make(limits, [manager("a")])
    with pytest.raises(errors.Unimplemented, match="not implemented"):
        f.create("r", ws(kind=model.Kind.SANDBOX))
    assert records.records == {}


def test_resume_drives_stale_pending_records(limits):
    clock = [model.utcnow()]
    records = FakeRecords([manager("a")])
    f = WorkspaceFactory(limits, records, FakeManagers(records), clock=lambda: clock[0])
    rec, _ = records.create_record("r", dataclasses.replace(ws(), create_time=clock[0], request_id="r"))
    assert f.resume_once(dt.timedelta(seconds=30)) == []
    clock[0] += dt.timedelta(seconds=31)
    assert f.resume_once(dt.timedelta(seconds=30)) == [rec.name]
    assert records.records[rec.name].state is model.State.RUNNING


def test_site_info_reports_kinds_and_limits(limits):
    f, _, _ = make(limits, [manager("a", free=3), manager("b", state=model.ManagerState.UNREACHABLE)])
    info = f.site_info()
    kinds = {k: (a, r) for k, a, r in info["kinds"]}
    assert kinds[model.Kind.UNIX_ACCOUNT] == (True, "3 free on 1 manager(s)")
    assert kinds[model.Kind.SANDBOX] == (False, "no available manager offers it right now")
    assert kinds[model.Kind.VIRTUAL_MACHINE] == (False, "no available manager offers it right now")
    assert info["available_managers"] == 1


def test_shortfall_and_rank():
    m = manager("a", free=0)
    assert "in use" in shortfall(m, model.WorkspaceSpec())
    assert shortfall(manager("b"), model.WorkspaceSpec(kind=model.Kind.SANDBOX)).startswith("does not offer")
    assert [x.name for x in rank([manager("x", free=1), manager("y", free=5)])] == ["managers/y", "managers/x"]


def _entitled(pool="", group=""):
    """A caller whose policy entitlement customises with an account pool and a Unix group."""
    from vws.common.auth.gate import PLAIN_TEXT_CALLER
    from vws.v1 import access_pb2, workspace_pb2
    e = access_pb2.Entitlement(rule="r", customisation=workspace_pb2.Customisation(account_pool=pool,
                                                                                   unix_group=group))
    return dataclasses.replace(PLAIN_TEXT_CALLER, entitlement=e)


def test_the_policys_account_pool_places_only_on_that_pools_managers(limits):
    pooled = dataclasses.replace(manager("p", free=1), account_pool="atlas")
    f, records, mgrs = make(limits, [manager("a", free=8), dataclasses.replace(manager("q"), account_pool="cms"),
                                     pooled])
    out = f.create("req-1", ws(), caller=_entitled(pool="atlas", group="atlasprd"))
    assert out.endpoint.manager == "managers/p" and mgrs.calls == ["p:1"]
    assert out.spec.software.unix_group == "atlasprd" and out.customisation.account_pool == "atlas"
    assert "no account pool" in shortfall(manager("a"), model.WorkspaceSpec(), "atlas")
    assert "leases from account pool cms" in shortfall(dataclasses.replace(manager("q"), account_pool="cms"),
                                                       model.WorkspaceSpec(), "atlas")
    # A workspace of no pool goes to any manager.
    assert shortfall(dataclasses.replace(manager("p"), account_pool="atlas"), model.WorkspaceSpec()) == ""
    with pytest.raises(errors.ResourceExhausted, match="policy puts your workspaces in pool atlas"):
        make(limits, [manager("a")])[0].create("req-2", ws(), caller=_entitled(pool="atlas"))


def test_a_request_cannot_name_its_own_unix_group(limits):
    f, records, _ = make(limits, [manager("a")])
    with pytest.raises(errors.InvalidArgument, match="site's policy") as err:
        f.create("req-1", ws(software=model.Software(unix_group="root")), caller=_entitled(group="atlasprd"))
    assert err.value.violations[0][0] == "workspace.spec.software.unix_group" and not records.records


def test_placements_between_registry_reads_are_counted_so_load_still_spreads(limits):
    f, records, mgrs = make(limits, [manager("a", free=4), manager("b", free=4)])
    for i in range(4):
        f.create(f"r{i}", ws())
    assert sorted(mgrs.calls) == ["a:1", "a:1", "b:1", "b:1"]


def test_no_default_bandwidth_where_nothing_could_shape_it(limits):
    account = admit(ws(kind=model.Kind.UNIX_ACCOUNT), limits)
    sandbox = admit(ws(kind=model.Kind.SANDBOX), limits)
    assert account.spec.resources.network_bits_per_second == 0
    assert sandbox.spec.resources.network_bits_per_second == limits.defaults.network_bits_per_second


def test_capacity_arithmetic_is_one_type_for_factory_and_manager():
    spec = model.WorkspaceSpec(resources=model.Resources(memory_bytes=2 * GiB, cpu_millis=500))
    one = model.Capacity.of(spec)
    assert one == model.Capacity(1, 2 * GiB, 0, 500)
    assert one.plus(one).minus(one) == one
    total = model.Capacity(2, 3 * GiB, 0, 0)  # no disk or cpu limit
    assert total.short(model.Capacity(), one) == []
    assert total.short(one, one) == ["memory"]
    assert total.short(model.Capacity(workspaces=2), model.Capacity.of(model.WorkspaceSpec())) == ["workspaces"]
    assert model.Capacity().short(model.Capacity(), one) == ["workspaces"]  # zero memory: no limit


def test_the_factory_tells_a_missing_image_as_it_tells_one_not_yours(limits):
    f, records, _ = make(limits, [manager("a", kinds=(model.Kind.VIRTUAL_MACHINE,))])

    def get_image(name):
        raise errors.NotFound(f"workspace.spec.software.image: image {name} is not in the catalogue")
    records.get_image = get_image
    with pytest.raises(errors.NotFound, match="does not exist or is not yours to boot"):
        f.create("r", ws(kind=model.Kind.VIRTUAL_MACHINE, software=model.Software(image="busybox")))
    assert records.records == {}


def test_a_refusing_manager_is_named_with_its_status_and_the_next_one_tried(limits):
    f, _, mgrs = make(limits, [manager("a", free=8), manager("b", free=1)],
                      refuse={"a:1": grpc.StatusCode.UNAVAILABLE, "b:1": grpc.StatusCode.RESOURCE_EXHAUSTED})
    with pytest.raises(errors.ResourceExhausted) as e:
        f.create("r", ws())
    assert dict(e.value.violations) == {"managers/a": "UNAVAILABLE: a:1 says no",
                                        "managers/b": "RESOURCE_EXHAUSTED: b:1 says no"}
    assert mgrs.calls == ["a:1", "b:1"]


def test_a_create_without_request_id_the_factory_could_not_answer_is_undone_not_driven_on(limits):
    """A factory that stopped mid-create left it: once no factory can still be waiting for its
    deploy, the resume loop destroys it on its manager and removes its record (issue 17, item 9)."""
    clock = [model.utcnow()]
    records = FakeRecords([manager("a")])
    mgrs = FakeManagers(records, refuse={"a:1": grpc.StatusCode.UNAVAILABLE})
    f = WorkspaceFactory(limits, records, mgrs, clock=lambda: clock[0], deploy_wait=dt.timedelta(minutes=6))
    rec, _ = records.create_record("auto-1f0e", dataclasses.replace(
        ws(), create_time=clock[0], request_id="auto-1f0e", endpoint=model.Endpoint("", "managers/a", "a:1")))
    clock[0] += dt.timedelta(minutes=5)  # its factory may still be waiting for the manager's deploy
    assert f.resume_once(dt.timedelta(seconds=30)) == [] and mgrs.destroyed == []
    clock[0] += dt.timedelta(minutes=2)
    assert f.resume_once(dt.timedelta(seconds=30)) == [] and rec.name in records.records  # its manager is away
    mgrs.refuse = {}
    assert f.resume_once(dt.timedelta(seconds=30)) == [rec.name]
    assert mgrs.destroyed == [("a:1", rec.name)] and mgrs.calls == [] and records.records == {}


def test_a_client_may_not_send_a_request_id_of_the_factorys_own(limits):
    f, records, _ = make(limits, [manager("a")])
    with pytest.raises(errors.InvalidArgument, match="choose another") as e:
        f.create("auto-1f0e", ws())
    assert [field for field, _ in e.value.violations] == ["request_id"] and records.records == {}


def test_the_resume_loop_leaves_a_create_a_manager_took_while_a_factory_may_still_wait_for_it(limits):
    clock = [model.utcnow()]
    records = FakeRecords([manager("a")])
    mgrs = FakeManagers(records)
    f = WorkspaceFactory(limits, records, mgrs, clock=lambda: clock[0], deploy_wait=dt.timedelta(minutes=6))
    rec, _ = records.create_record("r", dataclasses.replace(
        ws(), create_time=clock[0], update_time=clock[0], request_id="r", state=model.State.PROPAGATING,
        endpoint=model.Endpoint("", "managers/a", "a:1")))
    clock[0] += dt.timedelta(minutes=1)  # its image may still be on its way, a factory waiting for the deploy
    assert f.resume_once(dt.timedelta(seconds=30)) == [] and mgrs.calls == []
    clock[0] += dt.timedelta(minutes=6)
    assert f.resume_once(dt.timedelta(seconds=30)) == [rec.name] and mgrs.calls == ["a:1"]
    assert records.records[rec.name].state is model.State.RUNNING


def test_a_create_whose_manager_made_it_but_whose_answer_was_lost_is_not_made_again_elsewhere(limits):
    """Found by the chaos suite: the manager reported READY and was killed before it answered;
    the factory placed the workspace on the next manager too."""
    f, records, mgrs = make(limits, [manager("a", free=8), manager("b", free=1)])

    def deploy(address, workspace):
        mgrs.calls.append(address)
        ws = records.records[workspace.name]
        ws.state = model.State.READY  # reported to the repository ...
        raise errors.Unavailable("Stream removed")  # ... and the answer lost
    mgrs.deploy = deploy
    out = f.create("req-1", ws())
    assert out.state is model.State.READY and out.endpoint.manager == "managers/a"
    assert mgrs.calls == ["a:1"] and out.request_id == "req-1"


def test_managers_that_cannot_be_reached_answer_unavailable_not_a_lack_of_room(limits):
    """A client retries UNAVAILABLE with its request_id; RESOURCE_EXHAUSTED 'no room' it does not."""
    f, records, mgrs = make(limits, [manager("a"), manager("b")],
                            refuse={"a:1": grpc.StatusCode.UNAVAILABLE, "b:1": grpc.StatusCode.UNAVAILABLE})
    with pytest.raises(errors.Unavailable, match="retry with the same request_id"):
        f.create("req-1", ws())
    f, records, mgrs = make(limits, [manager("a"), manager("b")],
                            refuse={"a:1": grpc.StatusCode.UNAVAILABLE, "b:1": grpc.StatusCode.RESOURCE_EXHAUSTED})
    with pytest.raises(errors.ResourceExhausted):
        f.create("req-1", ws())


def test_a_lone_manager_that_made_it_and_lost_its_answer_is_answered_with_what_it_made(limits):
    f, records, mgrs = make(limits, [manager("a")])

    def deploy(address, workspace):
        records.records[workspace.name].state = model.State.READY
        raise errors.Unavailable("Stream removed")
    mgrs.deploy = deploy
    assert f.create("req-1", ws()).state is model.State.READY


def test_when_every_manager_is_unreachable_by_its_heartbeat_the_answer_is_unavailable(limits):
    """The chaos suite saw RESOURCE_EXHAUSTED 'no manager has room' after a repository restart,
    every manager UNREACHABLE until its next heartbeat: nothing lacked room."""
    f, _, _ = make(limits, [manager("a", state=model.ManagerState.UNREACHABLE),
                            manager("b", state=model.ManagerState.UNREACHABLE)])
    with pytest.raises(errors.Unavailable, match="no manager could be reached"):
        f.create("req-1", ws())
    f, _, _ = make(limits, [manager("a", free=0), manager("b", state=model.ManagerState.UNREACHABLE)])
    with pytest.raises(errors.ResourceExhausted):
        f.create("req-2", ws())
