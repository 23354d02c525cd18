"""The manager's state machine, outbox and reconciliation over a fake backend and repository."""
from __future__ import annotations

import dataclasses
import subprocess
import threading
import time

import grpc
import pytest

from vws.common import errors, model
from vws.common.model import Action, State
from vws.manager.backends.base import Backend, HostHandle
from vws.manager.accounting import UsageAccounting
from vws.manager.held import HeldWorkspaces, ManagerIdentity
from vws.manager.migration import FileOffer, Migrations
from vws.manager.service import WorkspaceManager
from vws.manager.state import LocalState


class Down(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


class FakeBackend(Backend):
    name = "fake"
    kinds = frozenset({model.Kind.UNIX_ACCOUNT})

    def __init__(self, slots=4):
        self.accounts: dict[str, str] = {}  # account -> workspace id
        self.log: list[tuple[str, str]] = []
        self.slots = slots
        self.fail_realise = False

    def capacity(self):
        return model.Capacity(self.slots, 0, 0, 0)

    def realise(self, workspace_id, spec, progress=None):
        if self.fail_realise:
            raise errors.InvalidArgument("exit 3", "workspace.spec.software.setup_script")
        self.accounts["u-" + workspace_id] = workspace_id
        return HostHandle(workspace_id, "u-" + workspace_id)

    def _do(self, what, h):
        self.log.append((what, h.host_identity))

    def start(self, h): self._do("start", h)
    def stop(self, h, force=False): self._do("stop", h)
    def pause(self, h): self._do("pause", h)
    def resume(self, h): self._do("resume", h)

    def destroy(self, h):
        self._do("destroy", h)
        self.accounts.pop(h.host_identity, None)

    def spawn(self, h, options):
        return subprocess.Popen(["true"])

    def exists(self, h):
        return h.host_identity in self.accounts

    def inventory(self):
        return dict(self.accounts)

    def reclaim(self, host_identity):
        self._do("reclaim", HostHandle("", host_identity))
        self.accounts.pop(host_identity, None)

    def maintain(self): pass
    def close(self): pass


class FakeRepository:
    def __init__(self):
        self.reports: list = []
        self.records: dict[str, model.Workspace] = {}
        self.up = True
        self.registered = []

    def _check(self):
        if not self.up:
            raise Down()

    def report(self, manager, report):
        self._check()
        held_by = self.records[report.name].endpoint.manager if report.name in self.records else ""
        if held_by and held_by != manager:
            raise errors.FailedPrecondition(f"{manager} may not report on {report.name}: it is held by {held_by}")
        self.reports.append((report.name, report.state))
        if report.name in self.records:
            self.records[report.name].state = report.state

    def register(self, info):
        self._check()
        self.registered.append(info.name)

    def progress(self, manager, name, progress):
        self._check()
        self.progressed = getattr(self, "progressed", []) + [(name, progress)]

    def heartbeat(self, manager, allocated):
        self._check()
        return True

    def workspaces_on(self, manager):
        self._check()
        # copies, as the wire gives: a report made after the listing does not change what it listed
        return [dataclasses.replace(w) for w in self.records.values() if w.endpoint.manager == manager]

    def get(self, name):
        self._check()
        return self.records.get(name)


def build(tmp_path, backend, repo, accounting_interval=10.0) -> WorkspaceManager:
    """The manager as vws.manager.server builds it: its parts first, then its core."""
    held = HeldWorkspaces(ManagerIdentity("m1", "127.0.0.1:1"), LocalState(tmp_path / "state.db"), backend, repo)
    accounting = UsageAccounting(held, backend, repo, tmp_path / "state.db", accounting_interval)
    migrations = Migrations(held, repo, peers=None, transfers=None, workdir=tmp_path / "migration")
    return WorkspaceManager(held, repo, migrations, accounting)


def close(mgr: WorkspaceManager) -> None:
    mgr.accounting.close()
    mgr.state.close()


@pytest.fixture
def parts(tmp_path):
    backend, repo = FakeBackend(), FakeRepository()
    mgr = build(tmp_path, backend, repo)
    yield mgr, backend, repo
    close(mgr)


def placed(name="workspaces/wabcdefghijk", start=True):
    ws = model.Workspace(name=name, spec=model.WorkspaceSpec(start_on_create=start), owner="alice",
                         endpoint=model.Endpoint(name, "managers/m1", "127.0.0.1:1"), create_time=model.utcnow())
    return ws


def test_deploy_realises_starts_and_reports(parts):
    mgr, backend, repo = parts
    repo.records["workspaces/wabcdefghijk"] = placed()
    out = mgr.deploy(placed())
    assert out.state is State.RUNNING and out.endpoint.host_identity == "u-wabcdefghijk"
    assert repo.reports == [("workspaces/wabcdefghijk", State.RUNNING)]
    assert mgr.deploy(placed()).state is State.RUNNING  # idempotent
    assert len(backend.accounts) == 1


def test_deploy_without_start_is_ready(parts):
    mgr, backend, repo = parts
    assert mgr.deploy(placed(start=False)).state is State.READY
    assert ("start", "u-wabcdefghijk") not in backend.log


def test_failed_deploy_leaves_nothing(parts):
    mgr, backend, repo = parts
    backend.fail_realise = True
    with pytest.raises(errors.InvalidArgument):
        mgr.deploy(placed())
    assert mgr.state.all() == [] and backend.accounts == {} and repo.reports == []


def test_full_manager_is_resource_exhausted(parts):
    mgr, backend, _ = parts
    backend.slots = 1
    mgr.deploy(placed("workspaces/waaaaaaaaaaa"))
    with pytest.raises(errors.ResourceExhausted, match="no room"):
        mgr.deploy(placed("workspaces/wbbbbbbbbbbb"))


def test_only_legal_moves_and_the_refusal_names_the_state(parts):
    mgr, backend, _ = parts
    name = mgr.deploy(placed(start=False)).name
    with pytest.raises(errors.FailedPrecondition, match="it is READY"):
        mgr.transition(name, Action.PAUSE)
    assert mgr.transition(name, Action.START).state is State.RUNNING
    assert mgr.transition(name, Action.PAUSE).state is State.PAUSED
    with pytest.raises(errors.FailedPrecondition, match="it is PAUSED"):
        mgr.spawn(name, ["true"], {}, "")
    assert mgr.transition(name, Action.RESUME).state is State.RUNNING
    assert mgr.transition(name, Action.STOP).state is State.READY
    with pytest.raises(errors.FailedPrecondition):
        mgr.transition(name, Action.STOP)
    assert mgr.transition(name, Action.DESTROY).state is State.TERMINATED
    assert mgr.destroy(name).state is State.TERMINATED  # idempotent
    assert backend.accounts == {}


def test_unknown_and_malformed_names(parts):
    mgr, _, _ = parts
    with pytest.raises(errors.NotFound):
        mgr.transition("workspaces/wzzzzzzzzzzz", Action.START)
    with pytest.raises(errors.InvalidArgument):
        mgr.transition("nope", Action.START)


def test_exec_checks_argv_and_environment(parts):
    mgr, _, _ = parts
    name = mgr.deploy(placed()).name
    with pytest.raises(errors.InvalidArgument, match="argv"):
        mgr.spawn(name, [], {}, "")
    with pytest.raises(errors.InvalidArgument, match="environment"):
        mgr.spawn(name, ["true"], {"A=B": "x"}, "")
    assert mgr.spawn(name, ["true"], {}, "").wait() == 0


def test_exec_refuses_what_the_kernel_would_before_spawning(parts):
    mgr, _, _ = parts
    name = mgr.deploy(placed()).name
    for argv, env, field in ((["echo", "a\0b"], {}, "argv[1]"), (["echo"], {"A": "\0"}, "environment[A]"),
                             (["echo"] + ["y" * 100_000] * 12, {}, "argv")):
        with pytest.raises(errors.InvalidArgument) as e:
            mgr.spawn(name, argv, env, "")
        assert field in dict(e.value.violations)


def test_state_changes_made_while_the_repository_is_down_reach_it_later_in_order(parts):
    mgr, _, repo = parts
    name = mgr.deploy(placed()).name
    repo.up = False
    mgr.transition(name, Action.PAUSE)
    mgr.transition(name, Action.RESUME)
    mgr.transition(name, Action.DESTROY)
    assert repo.reports == [(name, State.RUNNING)]
    repo.up = True
    mgr.flush()
    assert [s for _, s in repo.reports] == [State.RUNNING, State.PAUSED, State.RUNNING, State.TERMINATING,
                                            State.TERMINATED]


def test_reconcile_removes_orphans_fails_vanished_and_destroys_what_the_repository_ended(parts, tmp_path):
    mgr, backend, repo = parts
    kept, vanished, ended = "workspaces/wkeptkeptkep", "workspaces/wgonegonegon", "workspaces/wendedendede"
    for n in (kept, vanished, ended):
        repo.records[n] = placed(n)
        mgr.deploy(placed(n))
    repo.records[ended].state = State.TERMINATED
    backend.accounts.pop("u-wgonegonegon")          # someone ran userdel behind our back
    backend.accounts["u-worphanorpha"] = "worphanorpha"  # an account no workspace owns
    done = mgr.reconcile()
    assert done["orphans_removed"] == ["u-worphanorpha"]
    assert done["vanished"] == [vanished] and done["destroyed"] == [ended]
    assert repo.records[vanished].state is State.FAILED
    assert "vanished" in mgr.state.get(vanished).state_message
    assert set(backend.accounts) == {"u-wkeptkeptkep"}


def test_reconcile_undoes_a_deploy_interrupted_by_a_crash(parts):
    mgr, backend, repo = parts
    name = "workspaces/wcrashcrashc"
    from vws.manager.state import LocalWorkspace
    mgr.state.insert(LocalWorkspace(name=name, spec=model.WorkspaceSpec(), state=State.PENDING))
    backend.accounts["u-wcrashcrashc"] = "wcrashcrashc"  # realised, but the crash came before the row moved
    done = mgr.reconcile()
    assert done["undone"] == [name] and backend.accounts == {}
    assert (name, State.FAILED) in repo.reports


def test_a_deploy_undone_after_a_crash_is_deployed_again_when_asked_again(parts):
    mgr, backend, repo = parts
    name = "workspaces/wcrashcrashc"
    from vws.manager.state import LocalWorkspace
    repo.records[name] = placed(name)
    mgr.state.insert(LocalWorkspace(name=name, spec=model.WorkspaceSpec(start_on_create=True), state=State.PENDING))
    mgr.reconcile()
    assert repo.records[name].state is State.FAILED
    out = mgr.deploy(placed(name))  # the factory, for the retried create
    assert out.state is State.RUNNING and out.endpoint.host_identity == "u-wcrashcrashc"
    assert repo.records[name].state is State.RUNNING and backend.accounts == {"u-wcrashcrashc": "wcrashcrashc"}
    # a workspace that failed once it existed (its account vanished) is not made again behind its back
    backend.accounts.clear()
    mgr.reconcile()
    assert mgr.deploy(placed(name)).state is State.FAILED and backend.accounts == {}


def test_a_failed_second_deploy_stays_on_record_failed_with_nothing_on_the_host(parts):
    mgr, backend, repo = parts
    name = "workspaces/wcrashcrashc"
    from vws.manager.state import LocalWorkspace
    repo.records[name] = placed(name)
    mgr.state.insert(LocalWorkspace(name=name, spec=model.WorkspaceSpec(), state=State.PENDING))
    mgr.reconcile()
    backend.fail_realise = True
    with pytest.raises(errors.InvalidArgument):
        mgr.deploy(placed(name))
    ws = mgr.state.get(name)
    assert ws.state is State.FAILED and not ws.host_identity and "again failed" in ws.state_message
    assert repo.records[name].state is State.FAILED and backend.accounts == {}


def test_reconcile_drops_what_it_holds_of_a_create_a_retry_placed_on_another_manager(parts):
    """This manager stopped mid-deploy and the retried create, finding it away, went to another
    manager: its copy here (FAILED at restart, nothing on the host) held room that no record
    pointed at. One realised here whose answer was lost (the factory moved on) held an account."""
    mgr, backend, repo = parts
    from vws.manager.state import LocalWorkspace
    cut_short, realised = "workspaces/wmovedmovedm", "workspaces/wtwicetwicet"
    mgr.state.insert(LocalWorkspace(name=cut_short, spec=model.WorkspaceSpec(), state=State.PROPAGATING))
    mgr.deploy(placed(realised))
    for n in (cut_short, realised):
        repo.records[n] = dataclasses.replace(placed(n), state=State.RUNNING,
                                              endpoint=model.Endpoint(n, "managers/m2", "127.0.0.1:2"))
    done = mgr.reconcile()
    assert done["undone"] == [cut_short] and sorted(done["destroyed"]) == sorted([cut_short, realised])
    assert mgr.state.all() == [] and backend.accounts == {} and mgr.held.allocated() == model.Capacity()
    assert [repo.records[n].state for n in (cut_short, realised)] == [State.RUNNING] * 2  # the other manager's


def test_reconcile_adopts_a_workspace_whose_local_state_was_lost(parts, tmp_path):
    mgr, backend, repo = parts
    name = "workspaces/wlostlostlos"
    repo.records[name] = dataclasses.replace(placed(name), state=State.RUNNING)
    backend.accounts["u-wlostlostlos"] = "wlostlostlos"
    done = mgr.reconcile()
    assert done["adopted"] == [name] and mgr.state.get(name).state is State.RUNNING


def test_reconcile_with_the_repository_down_still_cleans_the_host(parts):
    mgr, backend, repo = parts
    repo.up = False
    backend.accounts["u-worphanorpha"] = "worphanorpha"
    assert mgr.reconcile()["orphans_removed"] == ["u-worphanorpha"]
    assert not mgr.heartbeat_once()
    repo.up = True
    assert mgr.heartbeat_once() and repo.registered == ["managers/m1"]


def test_room_is_kept_for_a_workspace_on_its_way_here(parts, tmp_path):
    mgr, backend, repo = parts
    backend.slots = 2
    mgr.deploy(placed("workspaces/wfirst000001"))
    arriving = placed("workspaces/warriving001")
    arriving.state = State.RUNNING
    ids = mgr.migrations.accept(arriving, "managers/m2", [FileOffer("home", 10)], "{}")
    assert ids == {"home": "migrate-warriving001-home"}
    assert mgr.migrations.accept(arriving, "managers/m2", [FileOffer("home", 10)], "{}") == ids  # a retry
    assert mgr.held.allocated().workspaces == 2
    with pytest.raises(errors.ResourceExhausted, match="2 of 2 workspaces in use"):
        mgr.deploy(placed("workspaces/wthird000001"))


def test_a_workspace_of_an_account_pool_comes_only_to_a_manager_of_that_pool(parts, tmp_path):
    mgr, backend, repo = parts
    pooled = dataclasses.replace(placed("workspaces/wpooled00001"), customisation=model.Customisation(
        account_pool="atlas"))
    with pytest.raises(errors.FailedPrecondition, match="account pool atlas.*leases from no pool"):
        mgr.deploy(pooled)
    arriving = dataclasses.replace(pooled, state=State.RUNNING)
    with pytest.raises(errors.FailedPrecondition, match="account pool atlas"):
        mgr.migrations.accept(arriving, "managers/m2", [FileOffer("home", 10)], "{}")
    assert mgr.state.all() == [] and backend.accounts == {} and mgr.state.migrations() == []
    backend.account_pool = "atlas"
    assert mgr.deploy(pooled).state is State.RUNNING


class SlowDestroyBackend(FakeBackend):
    """A backend whose destroy waits until the test lets it finish."""

    def __init__(self):
        super().__init__()
        self.destroying, self.finish = threading.Event(), threading.Event()

    def destroy(self, h):
        self.destroying.set()
        assert self.finish.wait(10)
        super().destroy(h)


def test_two_overlapping_destroys_both_answer_terminated(tmp_path):
    """A client's destroy and the repository's expiry loop (or two clients) may overlap: the
    second waits for the first and answers TERMINATED, never NOT_FOUND."""
    backend, repo = SlowDestroyBackend(), FakeRepository()
    mgr = build(tmp_path, backend, repo)
    name = mgr.deploy(placed()).name
    answers: dict[str, object] = {}

    def destroy(who):
        try:
            answers[who] = mgr.destroy(name, f"by {who}")
        except Exception as exc:  # noqa: BLE001 - the test reports it
            answers[who] = exc
    first = threading.Thread(target=destroy, args=("client",))
    first.start()
    assert backend.destroying.wait(10)
    second = threading.Thread(target=destroy, args=("expiry",))
    second.start()
    time.sleep(0.2)  # the second destroy is under way while the first is in the backend
    backend.finish.set()
    first.join(10)
    second.join(10)
    assert {who: getattr(a, "state", a) for who, a in answers.items()} == {
        "client": State.TERMINATED, "expiry": State.TERMINATED}
    assert [what for what, _ in backend.log].count("destroy") == 1
    assert [s for n, s in repo.reports if n == name] == [State.RUNNING, State.TERMINATING, State.TERMINATED]
    close(mgr)


def test_reconcile_destroys_its_copy_of_a_workspace_another_manager_holds(parts):
    """The deploy finished here but the crash took the answer: the factory placed the workspace
    on another manager, which made it too. Found by the chaos suite (seed 2246100703, round 4):
    this manager's account, cgroup and filesystem stayed for the workspace's whole life."""
    mgr, backend, repo = parts
    name = "workspaces/wtwicetwicet"
    repo.records[name] = placed(name)
    mgr.deploy(placed(name))
    repo.records[name] = dataclasses.replace(placed(name), state=State.RUNNING,
                                             endpoint=model.Endpoint(name, "managers/m2", "127.0.0.1:2"))
    repo.reports.clear()
    done = mgr.reconcile()
    assert done["destroyed"] == [name] and backend.accounts == {} and mgr.state.get(name) is None
    # nothing said of it to the repository: the record is the other manager's
    assert repo.reports == [] and repo.records[name].state is State.RUNNING


def test_reconcile_does_not_take_back_as_failed_what_it_destroyed_for_its_ended_record(parts):
    mgr, backend, repo = parts
    name = "workspaces/wendingendin"
    repo.records[name] = placed(name)
    mgr.deploy(placed(name))
    repo.records[name].state = State.TERMINATING  # its destroy did not reach this manager
    done = mgr.reconcile()
    assert done["destroyed"] == [name] and done["vanished"] == []
    assert mgr.state.get(name) is None and (name, State.FAILED) not in repo.reports
