"""ReportWorkspaceProgress in the repository's service layer, on SQLite and PostgreSQL: only the
holding manager reports; progress changes the workspace without adding to its history; an
empty report or any move of the state clears it; watchers see it."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading

import pytest

from tests.unit.test_repository_service import MANAGER, env, placed  # noqa: F401 - the fixture
from vws.common import errors, model
from vws.common.model import State
from vws.repository import store


def progress(clock, done=10 << 20, total=64 << 20, rate=5e6, **kw):
    return model.Progress(activity="propagating image busybox", done_bytes=done, total_bytes=total,
                          bytes_per_second=rate, update_time=kw.pop("at", clock()), **kw)


def propagating(service, clock):
    ws = placed(service, clock)
    clock.advance(seconds=1)
    return service.records.report_state(ws.name, MANAGER, State.PROPAGATING, "copying image busybox", clock())


def events_of(service, name):
    return service.workspaces.list_events(name)[0]


def agree(service, name):
    """The stored snapshot (what Get answers) says what the row says."""
    service.workspaces.cache.invalidate(name)
    with service.uow() as session:
        from_row = store.to_workspace(store.get_row(session, name))
    assert service.workspaces.get(name) == from_row
    return from_row


def test_progress_is_recorded_without_an_event(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    before = events_of(service, ws.name)
    clock.advance(seconds=1)
    p = progress(clock)
    assert service.records.report_progress(ws.name, MANAGER, p) is True
    got = service.workspaces.get(ws.name)
    assert got.progress == p and got.state is State.PROPAGATING
    assert got.update_time == ws.update_time  # progress is not a change of the workspace's own
    assert events_of(service, ws.name) == before
    assert agree(service, ws.name).progress == p
    later = progress(clock, done=64 << 20, rate=6e6)
    service.records.report_progress(ws.name, MANAGER, later)
    assert service.workspaces.get(ws.name).progress == later and events_of(service, ws.name) == before


def test_an_empty_report_clears_it(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    service.records.report_progress(ws.name, MANAGER, progress(clock))
    assert service.records.report_progress(ws.name, MANAGER, model.Progress()) is True
    assert service.workspaces.get(ws.name).progress is None and agree(service, ws.name).progress is None
    service.records.report_progress(ws.name, MANAGER, progress(clock))
    service.records.report_progress(ws.name, MANAGER, None)
    assert service.workspaces.get(ws.name).progress is None
    assert service.records.report_progress(ws.name, MANAGER, None) is True  # nothing to clear is no error


def test_a_state_that_moves_clears_it_and_one_that_stays_keeps_it(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    service.records.report_progress(ws.name, MANAGER, progress(clock))
    clock.advance(seconds=1)
    same = service.records.report_state(ws.name, MANAGER, State.PROPAGATING, "still copying", clock())
    assert same.progress is not None and service.workspaces.get(ws.name).progress is not None
    clock.advance(seconds=1)
    moved = service.records.report_state(ws.name, MANAGER, State.READY, "ready", clock())
    assert moved.progress is None and service.workspaces.get(ws.name).progress is None
    assert agree(service, ws.name).progress is None


def test_a_move_made_by_the_repository_clears_it_too(env):
    service, clock, managers = env
    ws = propagating(service, clock)
    service.records.report_progress(ws.name, MANAGER, progress(clock))
    managers.down = True
    assert service.lifetimes.delete(ws.name).state is State.TERMINATING
    assert service.workspaces.get(ws.name).progress is None and agree(service, ws.name).progress is None
    # A late report about the copy does not bring it back while it is being destroyed.
    assert service.records.report_progress(ws.name, MANAGER, progress(clock)) is False
    assert service.workspaces.get(ws.name).progress is None


def test_a_report_older_than_the_state_is_ignored(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    old = progress(clock, at=clock())
    clock.advance(seconds=1)
    service.records.report_state(ws.name, MANAGER, State.READY, "ready", clock())
    assert service.records.report_progress(ws.name, MANAGER, old) is False
    assert service.workspaces.get(ws.name).progress is None


def test_a_report_without_a_time_is_stamped_by_the_repository(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    clock.advance(seconds=2)
    service.records.report_progress(ws.name, MANAGER, dataclasses.replace(progress(clock), update_time=None))
    assert service.workspaces.get(ws.name).progress.update_time == clock()


def test_only_the_holding_manager_reports(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    with pytest.raises(errors.FailedPrecondition, match="held by managers/host-1"):
        service.records.report_progress(ws.name, "managers/other", progress(clock))
    unplaced, _ = service.records.create_record("", model.Workspace(
        name="workspaces/wunplaced0001", spec=model.WorkspaceSpec(), owner="alice",
        termination_time=clock() + dt.timedelta(hours=1)))
    with pytest.raises(errors.FailedPrecondition, match="not placed"):
        service.records.report_progress(unplaced.name, MANAGER, progress(clock))
    with pytest.raises(errors.NotFound):
        service.records.report_progress("workspaces/wnothere00001", MANAGER, progress(clock))
    with pytest.raises(errors.InvalidArgument) as e:
        service.records.report_progress(ws.name, "not a manager", progress(clock))
    assert e.value.violations[0][0] == "manager"
    assert service.workspaces.get(ws.name).progress is None


def test_bad_figures_name_their_field(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    for bad, field in ((progress(clock, done=-1), "progress.done_bytes"),
                       (progress(clock, total=-1), "progress.total_bytes"),
                       (progress(clock, done=20, total=10), "progress.done_bytes"),
                       (progress(clock, rate=float("nan")), "progress.bytes_per_second"),
                       (progress(clock, rate=-1.0), "progress.bytes_per_second"),
                       (dataclasses.replace(progress(clock), activity="x" * 300), "progress.activity")):
        with pytest.raises(errors.InvalidArgument) as e:
            service.records.report_progress(ws.name, MANAGER, bad)
        assert [f for f, _ in e.value.violations] == [field]
    assert service.workspaces.get(ws.name).progress is None


def test_watchers_see_progress(env):
    service, clock, _ = env
    ws = propagating(service, clock)
    seen: list[model.Workspace] = []
    started, got_progress = threading.Event(), threading.Event()
    active = [True]

    def watcher():
        for w in service.workspaces.watch(ws.name, lambda: active[0], poll=30.0):
            seen.append(w)
            started.set()
            if w.progress is not None:
                got_progress.set()
                return
    t = threading.Thread(target=watcher)
    t.start()
    assert started.wait(10)
    service.records.report_progress(ws.name, MANAGER, progress(clock))
    # Woken by the report itself, not by the 30 s poll.
    assert got_progress.wait(10)
    active[0] = False
    t.join(10)
    assert seen[-1].progress.done_bytes == 10 << 20


def test_progress_survives_the_round_trip_through_the_row():
    p = model.Progress("propagating image busybox", 1, 2, 3.5, model.utcnow())
    assert store.progress_from_json(store.progress_to_json(p)) == p
    assert store.progress_from_json(None) is None and store.progress_to_json(None) is None
