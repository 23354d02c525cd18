"""The repository's service layer on SQLite and PostgreSQL, with a fake manager gateway and a
fake clock."""
from __future__ import annotations

import datetime as dt
import threading

import pytest

from vws.common import config, errors, model
from vws.common.config import RepositorySettings
from vws.common.model import EventType, State
from vws.factory.validation import Limits, admit
from vws.repository import db
from vws.repository.policy import PolicyFile
from vws.repository.service import RepositoryService
from tests.unit.test_access import user
from tests.unit.test_auth_policy import POOL_RULES

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
MANAGER = "managers/host-1"
ADDRESS = "127.0.0.1:7703"


class Clock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, **kw):
        self.now += dt.timedelta(**kw)


class FakeManagers:
    """Destroys by reporting back to the repository, as a real manager does, unless down."""

    def __init__(self):
        self.down = False
        self.calls: list[tuple[str, str, str]] = []
        self.service: RepositoryService | None = None

    def destroy(self, address, name, reason):
        self.calls.append((address, name, reason))
        if self.down:
            raise errors.Unavailable(f"manager at {address} unreachable")
        self.service.records.report_state(name, MANAGER, State.TERMINATED, reason or "destroyed",
                                  change_time=self.service.clock())
        return model.Workspace(name=name, spec=model.WorkspaceSpec(), state=State.TERMINATED)


def make_env(database_url, policy=None, settings=None):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    clock, managers = Clock(), FakeManagers()
    settings = settings or RepositorySettings(max_lifetime=dt.timedelta(days=14),
                                              heartbeat_timeout=dt.timedelta(seconds=10))
    service = RepositoryService(db.UnitOfWork(engine), settings, managers, clock=clock, policy=policy)
    managers.service = service
    return service, clock, managers


@pytest.fixture
def env(database_url):
    service, clock, managers = make_env(database_url)
    yield service, clock, managers
    service.lifetimes.stop_expiry()
    service.uow.dispose()


_n = iter(range(10**6))


def new_ws(clock, owner="alice", labels=None, lifetime=dt.timedelta(hours=1), name=None, memory=0):
    return model.Workspace(name=name or f"workspaces/w{next(_n):011d}x", owner=owner, labels=labels or {},
                           spec=model.WorkspaceSpec(resources=model.Resources(memory_bytes=memory)),
                           termination_time=clock() + lifetime)


def placed(service, clock, **kw):
    ws, _ = service.records.create_record("", new_ws(clock, **kw))
    service.records.assign(ws.name, model.Endpoint(ws.name, MANAGER, ADDRESS))
    clock.advance(seconds=1)
    return service.records.report_state(ws.name, MANAGER, State.RUNNING, "started", clock(), "vws-1")


def field_of(exc_info):
    return [f for f, _ in exc_info.value.violations]


def assert_checks_the_name(get, unknown: str, malformed: str) -> None:
    """`get` refuses a name it does not hold (NotFound) and one that is no name (InvalidArgument on `name`)."""
    with pytest.raises(errors.NotFound):
        get(unknown)
    with pytest.raises(errors.InvalidArgument) as e:
        get(malformed)
    assert field_of(e) == ["name"]


# ----------------------------------------------------------------------------- records

def test_create_is_idempotent_on_request_id(env):
    service, clock, _ = env
    ws = new_ws(clock)
    first, created = service.records.create_record("req-1", ws)
    assert created and first.state is State.PENDING and first.request_id == "req-1"
    # A retry: the factory recomputes the termination time from its clock; still the same request.
    clock.advance(seconds=5)
    again, created = service.records.create_record("req-1", new_ws(clock, name=ws.name))
    assert not created and again == first
    other = new_ws(clock, memory=1024)
    with pytest.raises(errors.AlreadyExists, match="req-1"):
        service.records.create_record("req-1", other)
    events, _ = service.workspaces.list_events(first.name)
    assert [e.type for e in events] == [EventType.CREATED]


def test_create_refuses_missing_name_and_termination_time(env):
    service, clock, _ = env
    ws = new_ws(clock)
    ws.name = ""
    with pytest.raises(errors.InvalidArgument) as e:
        service.records.create_record("", ws)
    assert field_of(e) == ["workspace.name"]
    ws = new_ws(clock)
    ws.termination_time = None
    with pytest.raises(errors.InvalidArgument) as e:
        service.records.create_record("", ws)
    assert field_of(e) == ["workspace.termination_time"]


def test_an_owner_as_long_as_an_identity_is_kept_and_a_longer_one_refused(env):
    service, clock, _ = env
    longest = "/DC=org/DC=example/CN=" + "a" * (db.OWNER_WIDTH - 22)
    ws, _ = service.records.create_record("", new_ws(clock, owner=longest))
    assert service.workspaces.get(ws.name).owner == longest
    assert [w.name for w in service.workspaces.list(owner=longest)[0]] == [ws.name]
    with pytest.raises(errors.InvalidArgument, match=f"is {db.OWNER_WIDTH + 1} characters long; an owner has at "
                                                     f"most {db.OWNER_WIDTH}") as e:
        service.records.create_record("", new_ws(clock, owner=longest + "b"))
    assert field_of(e) == ["owner"]
    with pytest.raises(errors.InvalidArgument, match="the identity of your credentials") as e:
        service.records.create_record("", new_ws(clock), caller=user(longest + "b"))
    assert field_of(e) == ["owner"]
    assert [w.name for w in service.workspaces.list()[0]] == [ws.name]  # nothing half-made


def test_assign_and_reports(env):
    service, clock, _ = env
    ws = placed(service, clock)
    assert ws.state is State.RUNNING and ws.endpoint.manager == MANAGER and ws.endpoint.host_identity == "vws-1"
    with pytest.raises(errors.FailedPrecondition):
        service.records.report_state(ws.name, "managers/other", State.READY, "", clock())
    # An older report is recorded but does not move the state.
    old = service.records.report_state(ws.name, MANAGER, State.READY, "late", clock() - dt.timedelta(minutes=1))
    assert old.state is State.RUNNING
    events, _ = service.workspaces.list_events(ws.name)
    assert [e.type for e in events] == [EventType.CREATED, EventType.PLACED, EventType.STATE_CHANGED,
                                        EventType.STATE_CHANGED]
    assert "ignored" in events[-1].message and events[-1].source == MANAGER
    clock.advance(seconds=1)
    done = service.records.report_state(ws.name, MANAGER, State.TERMINATED, "destroyed", clock())
    assert done.state is State.TERMINATED
    clock.advance(seconds=1)
    assert service.records.report_state(ws.name, MANAGER, State.RUNNING, "", clock()).state is State.TERMINATED
    assert service.workspaces.get(ws.name).state is State.TERMINATED
    with pytest.raises(errors.NotFound):
        service.records.report_state("workspaces/wnothere1234", MANAGER, State.RUNNING, "", clock())


def test_move_hands_a_migrating_workspace_to_its_destination(env):
    service, clock, _ = env
    ws = placed(service, clock)
    there = model.Endpoint(ws.name, "managers/there", "10.0.0.2:7703", "vws-2")
    with pytest.raises(errors.FailedPrecondition, match="only a MIGRATING workspace moves"):
        service.records.move(ws.name, MANAGER, there)
    clock.advance(seconds=1)
    service.records.report_state(ws.name, MANAGER, State.MIGRATING, "migrating to managers/there", clock())
    with pytest.raises(errors.FailedPrecondition, match="held by .*not by managers/else"):
        service.records.move(ws.name, "managers/else", there)
    with pytest.raises(errors.InvalidArgument) as e:
        service.records.move(ws.name, MANAGER, model.Endpoint(ws.name, MANAGER, ADDRESS))
    assert field_of(e) == ["endpoint.manager"]
    moved = service.records.move(ws.name, MANAGER, there, "1.0M sent")
    assert moved.endpoint.manager == "managers/there" and moved.endpoint.manager_address == "10.0.0.2:7703"
    assert moved.endpoint.host_identity == "vws-2" and moved.state is State.MIGRATING
    assert service.records.move(ws.name, MANAGER, there) == moved  # a retry by the new holder
    # the old holder may no longer report; the new one may
    with pytest.raises(errors.FailedPrecondition):
        service.records.report_state(ws.name, MANAGER, State.RUNNING, "", clock())
    clock.advance(seconds=1)
    arrived = service.records.report_state(ws.name, "managers/there", State.RUNNING, "arrived", clock())
    assert arrived.state is State.RUNNING
    events, _ = service.workspaces.list_events(ws.name)
    migrated = [e for e in events if e.type is EventType.MIGRATED]
    assert len(migrated) == 1 and migrated[0].source == "managers/there"
    assert migrated[0].message == f"migrated from {MANAGER} to managers/there (10.0.0.2:7703): 1.0M sent"
    assert service.workspaces.get(ws.name).endpoint.manager == "managers/there"


def test_report_before_placement_is_refused(env):
    service, clock, _ = env
    ws, _ = service.records.create_record("", new_ws(clock))
    with pytest.raises(errors.FailedPrecondition, match="not placed"):
        service.records.report_state(ws.name, MANAGER, State.RUNNING, "", clock())


def test_delete_record_only_while_pending(env):
    service, clock, _ = env
    ws, _ = service.records.create_record("req-x", new_ws(clock))
    service.records.delete_record(ws.name, "placement failed")
    with pytest.raises(errors.NotFound):
        service.workspaces.get(ws.name)
    # The request id is free again: nothing was left behind.
    assert service.records.create_record("req-x", new_ws(clock))[1]
    running = placed(service, clock)
    with pytest.raises(errors.FailedPrecondition):
        service.records.delete_record(running.name)


# ----------------------------------------------------------------------------- reads

def test_get_errors(env):
    service, _, _ = env
    assert_checks_the_name(service.workspaces.get, "workspaces/wnothere1234", "bogus")


def test_list_pages_newest_first_with_filters(env):
    service, clock, _ = env
    made = []
    for i in range(7):
        clock.advance(seconds=1)
        made.append(service.records.create_record("", new_ws(clock, owner="alice" if i % 2 else "bob",
                                                     labels={"team": "a" if i < 4 else "b", "n": str(i)}))[0])
    names = [w.name for w in reversed(made)]
    got, token = [], ""
    while True:
        page, token = service.workspaces.list(3, token)
        got += [w.name for w in page]
        assert len(page) <= 3
        if not token:
            break
    assert got == names
    assert [w.name for w in service.workspaces.list(owner="alice")[0]] == [
        w.name for w in reversed(made) if w.owner == "alice"]
    assert [w.name for w in service.workspaces.list(labels={"team": "a", "n": "1"})[0]] == [made[1].name]
    assert service.workspaces.list(labels={"team": "c"})[0] == []
    # Same create_time for several: the id breaks the tie, no row lost or repeated.
    for _ in range(5):
        service.records.create_record("", new_ws(clock, owner="tie"))
    seen, token = [], ""
    while True:
        page, token = service.workspaces.list(2, token, owner="tie")
        seen += [w.name for w in page]
        if not token:
            break
    assert len(seen) == len(set(seen)) == 5


def test_list_states_and_manager_filter(env):
    service, clock, _ = env
    pending, _ = service.records.create_record("", new_ws(clock))
    running = placed(service, clock)
    gone = placed(service, clock)
    clock.advance(seconds=1)
    service.records.report_state(gone.name, MANAGER, State.TERMINATED, "", clock())
    default = {w.name for w in service.workspaces.list()[0]}
    assert default == {pending.name, running.name}
    assert [w.name for w in service.workspaces.list(states=[State.TERMINATED])[0]] == [gone.name]
    assert {w.name for w in service.workspaces.list(states=[State.RUNNING, State.PENDING])[0]} == default
    assert [w.name for w in service.workspaces.list(manager=MANAGER)[0]] == [running.name]


def test_list_argument_errors(env):
    service, clock, _ = env
    for i in range(3):
        service.records.create_record("", new_ws(clock))
    with pytest.raises(errors.InvalidArgument) as e:
        service.workspaces.list(-1)
    assert field_of(e) == ["page_size"]
    _, token = service.workspaces.list(1)
    with pytest.raises(errors.InvalidArgument) as e:
        service.workspaces.list(1, token, owner="someone-else")
    assert field_of(e) == ["page_token"]
    for garbage in ("garbage!", "e30", "bm90IGpzb24"):
        with pytest.raises(errors.InvalidArgument) as e:
            service.workspaces.list(1, garbage)
        assert field_of(e) == ["page_token"]
    assert len(service.workspaces.list(5000)[0]) == 3  # over the maximum is taken as the maximum


def test_events_pages_oldest_first(env):
    service, clock, _ = env
    ws = placed(service, clock)
    for i in range(4):
        clock.advance(seconds=1)
        service.lifetimes.update_termination_time(ws.name, extend_by=dt.timedelta(minutes=1))
    got, token = [], ""
    while True:
        page, token = service.workspaces.list_events(ws.name, 2, token)
        got += page
        if not token:
            break
    assert [e.name for e in got] == [f"{ws.name}/events/{i}" for i in range(1, 8)]
    assert got[0].type is EventType.CREATED and got[-1].type is EventType.TERMINATION_TIME_CHANGED
    with pytest.raises(errors.InvalidArgument) as e:
        service.workspaces.list_events("workspaces/wnothere1234", 2, token or "x")
    assert field_of(e) == ["page_token"]


# ----------------------------------------------------------------------------- changes

def test_update_termination_time(env):
    service, clock, _ = env
    ws = placed(service, clock)
    later = service.lifetimes.update_termination_time(ws.name, extend_by=dt.timedelta(hours=2))
    assert later.termination_time == ws.termination_time + dt.timedelta(hours=2)
    target = clock() + dt.timedelta(days=3)
    assert service.lifetimes.update_termination_time(ws.name, termination_time=target).termination_time == target
    with pytest.raises(errors.InvalidArgument) as e:
        service.lifetimes.update_termination_time(ws.name, termination_time=clock() - dt.timedelta(seconds=1))
    assert field_of(e) == ["termination_time"]
    with pytest.raises(errors.InvalidArgument, match="maximum") as e:
        service.lifetimes.update_termination_time(ws.name, termination_time=ws.create_time + dt.timedelta(days=15))
    assert field_of(e) == ["termination_time"]
    clock.advance(seconds=1)
    service.records.report_state(ws.name, MANAGER, State.TERMINATING, "", clock())
    with pytest.raises(errors.FailedPrecondition):
        service.lifetimes.update_termination_time(ws.name, extend_by=dt.timedelta(hours=1))


@pytest.mark.parametrize("where", ["vws.toml", "environment"])
def test_a_create_and_an_extend_obey_one_site_maximum(database_url, tmp_path, where):
    """max_lifetime is one site setting: the factory admits a create of at most it, and the
    repository extends a workspace to at most it from its creation."""
    (tmp_path / "vws.toml").write_text('max_lifetime = "3d"\n' if where == "vws.toml" else "")
    environ = {"VWS_MAX_LIFETIME": "3d"} if where == "environment" else {}
    factory = config.load("factory", {"data_dir": str(tmp_path)}, environ=environ)
    repository = config.load("repository", {"data_dir": str(tmp_path)}, environ=environ)
    maximum, second = dt.timedelta(days=3), dt.timedelta(seconds=1)
    limits = Limits.from_settings(factory)

    def create(lifetime):
        return admit(model.Workspace("", model.WorkspaceSpec(kind=model.Kind.UNIX_ACCOUNT, lifetime=lifetime)),
                     limits)
    assert create(maximum).spec.lifetime == maximum
    with pytest.raises(errors.InvalidArgument, match="over this site's maximum of 3d") as e:
        create(maximum + second)
    assert field_of(e) == ["workspace.spec.lifetime"]

    service, clock, _ = make_env(database_url, settings=repository)
    try:
        ws = placed(service, clock)
        end = ws.create_time + maximum
        assert service.lifetimes.update_termination_time(ws.name, termination_time=end).termination_time == end
        with pytest.raises(errors.InvalidArgument, match="maximum lifetime, max_lifetime, of 3d") as e:
            service.lifetimes.update_termination_time(ws.name, extend_by=second)
        assert field_of(e) == ["extend_by"] and "extend it by at most 0s" in str(e.value)
    finally:
        service.uow.dispose()


def test_delete_through_the_manager(env):
    service, clock, managers = env
    ws = placed(service, clock)
    clock.advance(seconds=1)
    gone = service.lifetimes.delete(ws.name)
    assert gone.state is State.TERMINATED
    assert managers.calls == [(ADDRESS, ws.name, "deleted on request")]
    assert service.lifetimes.delete(ws.name) == gone and len(managers.calls) == 1  # idempotent
    states = [e.state for e in service.workspaces.list_events(ws.name)[0]]
    assert states[-2:] == [State.TERMINATING, State.TERMINATED]


def test_delete_never_placed_terminates_at_once(env):
    service, clock, managers = env
    ws, _ = service.records.create_record("", new_ws(clock))
    assert service.lifetimes.delete(ws.name).state is State.TERMINATED
    assert managers.calls == []


def test_delete_with_manager_down_is_retried_by_expiry(env):
    service, clock, managers = env
    ws = placed(service, clock)
    managers.down = True
    assert service.lifetimes.delete(ws.name).state is State.TERMINATING
    assert service.lifetimes.expire_once() == []  # backing off
    service.lifetimes.retries.forget(ws.name)  # its backoff over
    assert service.lifetimes.expire_once() == [ws.name]
    assert service.workspaces.get(ws.name).state is State.TERMINATING
    managers.down = False
    service.lifetimes.retries.forget(ws.name)  # its backoff over
    service.lifetimes.expire_once()
    assert service.workspaces.get(ws.name).state is State.TERMINATED


def test_expiry_destroys_ended_workspaces(env):
    service, clock, managers = env
    short = placed(service, clock, lifetime=dt.timedelta(minutes=5))
    long = placed(service, clock, lifetime=dt.timedelta(hours=5))
    unplaced, _ = service.records.create_record("", new_ws(clock, lifetime=dt.timedelta(minutes=5)))
    assert service.lifetimes.expire_once() == []
    clock.advance(minutes=10)
    assert sorted(service.lifetimes.expire_once()) == sorted([short.name, unplaced.name])
    assert managers.calls == [(ADDRESS, short.name, "lifetime ended")]
    assert service.workspaces.get(short.name).state is State.TERMINATED
    assert service.workspaces.get(unplaced.name).state is State.TERMINATED
    assert service.workspaces.get(long.name).state is State.RUNNING


def test_watch_streams_changes_until_terminated(env):
    service, clock, _ = env
    ws = placed(service, clock)
    seen: list[model.Workspace] = []
    started = threading.Event()

    def watcher():
        for w in service.workspaces.watch(ws.name, poll=5.0):
            seen.append(w)
            started.set()
    t = threading.Thread(target=watcher)
    t.start()
    assert started.wait(5)
    clock.advance(seconds=1)
    service.lifetimes.update_termination_time(ws.name, extend_by=dt.timedelta(hours=1))
    clock.advance(seconds=1)
    service.lifetimes.delete(ws.name)
    t.join(10)
    assert not t.is_alive()
    assert seen[0].state is State.RUNNING and seen[-1].state is State.TERMINATED
    assert len(seen) >= 2  # changes close together may reach a watcher as one
    assert service.hub.watcher_count(ws.name) == 0


def test_watch_ends_when_cancelled(env):
    service, clock, _ = env
    ws = placed(service, clock)
    active = [True]
    stream = service.workspaces.watch(ws.name, lambda: active[0], poll=0.05)
    assert next(stream).name == ws.name
    active[0] = False
    assert list(stream) == []


# ----------------------------------------------------------------------------- managers

def test_managers_registry(env):
    service, clock, _ = env
    with pytest.raises(errors.NotFound):
        service.managers.heartbeat(MANAGER, model.Capacity())
    info = model.ManagerInfo(name=MANAGER, address=ADDRESS, kinds=[model.Kind.UNIX_ACCOUNT], backend="dynamic-accounts",
                             capacity=model.Capacity(8, 1 << 30, 1 << 32, 4000))
    got = service.managers.register_manager(info)
    assert got.state is model.ManagerState.AVAILABLE and got.register_time == T0
    clock.advance(seconds=5)
    beat = service.managers.heartbeat(MANAGER, model.Capacity(workspaces=2))
    assert beat.allocated.workspaces == 2 and beat.heartbeat_time == clock()
    service.managers.register_manager(model.ManagerInfo(name="managers/host-2", address="h2:1"))
    clock.advance(seconds=11)
    service.managers.heartbeat("managers/host-2", model.Capacity())
    listed, token = service.managers.list_managers(1)
    assert listed[0].name == MANAGER and listed[0].state is model.ManagerState.UNREACHABLE
    rest, token = service.managers.list_managers(1, token)
    assert rest[0].name == "managers/host-2" and rest[0].state is model.ManagerState.AVAILABLE and token == ""
    with pytest.raises(errors.InvalidArgument):
        service.managers.register_manager(model.ManagerInfo(name="bad name", address="x:1"))


def test_the_stored_snapshot_always_matches_the_row(env):
    """Get answers from a snapshot rewritten at each commit; after every kind of write it must
    say what the row says."""
    service, clock, _ = env
    from vws.repository import store

    def agree(name):
        service.workspaces.cache.invalidate(name)
        with service.uow() as session:
            row = store.get_row(session, name)
            from_row = store.to_workspace(row)
        assert service.workspaces.get(name) == from_row
    ws = placed(service, clock, labels={"team": "a"})
    agree(ws.name)
    clock.advance(seconds=1)
    service.lifetimes.update_termination_time(ws.name, extend_by=dt.timedelta(hours=1))
    agree(ws.name)
    clock.advance(seconds=1)
    service.records.report_state(ws.name, MANAGER, State.PAUSED, "paused", clock(), "")
    agree(ws.name)
    service.lifetimes.delete(ws.name)
    agree(ws.name)


def test_spec_survives_the_round_trip_through_the_database():
    from vws.repository import store
    spec = model.WorkspaceSpec(kind=model.Kind.SANDBOX, resources=model.Resources(1, 2, 3, 4, 5),
                               software=model.Software(environment={"A": "b"}, setup_script="true",
                                                       files=[model.StagedFile("f", b"\0x", 0o600)]),
                               lifetime=dt.timedelta(hours=2), start_on_create=False)
    assert store.spec_from_json(store.spec_to_json(spec)) == spec


# ----------------------------------------------------------------------------- the policy on kinds

POOL_MANAGER, POOL_ADDRESS = "managers/pool-1", "127.0.0.1:7713"


@pytest.fixture
def policed(database_url, tmp_path):
    """A repository deciding with test_auth_policy's POOL_RULES, one manager leasing accounts
    from a pool and one making them."""
    path = tmp_path / "policy.toml"
    path.write_text(POOL_RULES)
    service, clock, managers = make_env(database_url, PolicyFile(path))
    kinds = [model.Kind.UNIX_ACCOUNT, model.Kind.SANDBOX]
    service.managers.register_manager(model.ManagerInfo(POOL_MANAGER, POOL_ADDRESS, kinds, account_pool="vwsp"))
    service.managers.register_manager(model.ManagerInfo(MANAGER, ADDRESS, kinds))
    yield service, clock
    service.uow.dispose()


def create_on(service, clock, who, manager="", kind=model.Kind.UNIX_ACCOUNT):
    """A create by `who`, the factory's first choice `manager` (none: not yet placed)."""
    ws = new_ws(clock)
    ws.spec.kind = kind
    if manager:
        ws.endpoint = model.Endpoint(ws.name, manager, POOL_ADDRESS if manager == POOL_MANAGER else ADDRESS)
    return service.records.create_record("", ws, caller=user(who))[0]


def test_a_pool_rule_admits_an_account_leased_from_a_pool(policed):
    """kinds = ["pool"] (README's example): an account placed on a manager that leases from a
    pool is a pool workspace; it used to be refused as "account"."""
    service, clock = policed
    ws = create_on(service, clock, "/O=vws/CN=pools", POOL_MANAGER)
    assert ws.state is State.PENDING and ws.customisation.rule == "pools"


def test_a_pool_rule_refuses_an_account_made_on_its_host(policed):
    service, clock = policed
    for manager in (MANAGER, ""):  # a manager without a pool, or no manager chosen yet
        with pytest.raises(errors.PermissionDenied, match="account workspaces are not allowed.*ask for pool"):
            create_on(service, clock, "/O=vws/CN=pools", manager)
    with pytest.raises(errors.PermissionDenied, match="sandbox workspaces are not allowed"):
        create_on(service, clock, "/O=vws/CN=pools", POOL_MANAGER, model.Kind.SANDBOX)


def test_an_account_rule_admits_accounts_dynamic_and_pooled(policed):
    service, clock = policed
    for manager in (POOL_MANAGER, MANAGER, ""):
        assert create_on(service, clock, "/O=vws/CN=accounts", manager).customisation.rule == "accounts"


def test_a_rule_that_puts_accounts_in_a_pool_makes_them_pool_workspaces(policed):
    """customise.account_pool: only managers of that pool take the workspace, so its account is
    leased from a pool wherever the factory places it."""
    service, clock = policed
    ws = create_on(service, clock, "/O=vws/CN=atlas")
    assert ws.customisation.rule == "atlas-pool" and ws.account_pool == "atlas"
