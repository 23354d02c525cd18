"""Usage accounting on the manager (vws.manager.accounting) over a fake backend whose counters
the test sets, with their sample times as a fake clock, and a fake repository."""
from __future__ import annotations

import pytest

from vws.common import model
from vws.common.model import Action, EventType, State
from vws.manager.backends.base import Counters
from tests.unit.test_manager_service import Down, FakeBackend, FakeRepository, build, placed

NAME = "workspaces/wabcdefghijk"
GiB = 1024 ** 3


class CountingBackend(FakeBackend):
    """Counters per account, set by the test; `now` is the clock the samples carry."""

    def __init__(self):
        super().__init__(slots=64)
        self.now = 1000.0
        self.counters: dict[str, dict] = {}

    def set(self, account="u-wabcdefghijk", **values):
        self.counters.setdefault(account, {}).update(values)

    def sample(self, handle):
        if handle.host_identity not in self.accounts:
            return None
        return Counters(time=self.now, **self.counters.get(handle.host_identity, {}))


class UsageRepository(FakeRepository):
    def __init__(self):
        super().__init__()
        self.usage_reports: list[list[model.Usage]] = []
        self.events: list[tuple[str, EventType, str]] = []

    def report(self, manager, report):
        super().report(manager, report)
        self.events.append((report.name, report.event_type, report.message))

    def report_usage(self, manager, usages):
        self._check()
        assert manager == "managers/m1"
        self.usage_reports.append(list(usages))
        return len(usages)

    def latest(self, name=NAME) -> model.Usage:
        return [u for batch in self.usage_reports for u in batch if u.name == name][-1]


def started(tmp_path):
    backend, repo = CountingBackend(), UsageRepository()
    return build(tmp_path, backend, repo), backend, repo


def stop(mgr) -> None:
    mgr.accounting.close()
    mgr.state.close()


def round_later(mgr, backend, seconds=10, **counters) -> None:
    """The clock moves on, the counters take the values given, and a round samples them."""
    backend.now += seconds
    if counters:
        backend.set(**counters)
    mgr.accounting.run_once()


@pytest.fixture
def parts(tmp_path):
    mgr, backend, repo = started(tmp_path)
    yield mgr, backend, repo
    stop(mgr)


def test_rounds_report_cumulative_usage_and_destroy_reports_final(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())
    backend.set(cpu_ns=0, memory_current=GiB, net_rx=10, net_tx=5, disk_used=4096)
    assert mgr.accounting.run_once() == 1
    first = repo.latest()
    assert first.samples == 1 and first.cpu_seconds == 0 and first.memory_peak_bytes == GiB and not first.final
    assert first.network_rx_bytes == 10 and first.disk_used_bytes == 4096  # counted from the cgroup's zero

    round_later(mgr, backend, cpu_ns=4_000_000_000, memory_current=GiB // 2, net_rx=110)
    u = repo.latest()
    assert u.cpu_seconds == 4.0 and u.samples == 2 and u.wall_seconds == 10.0
    assert u.memory_current_bytes == GiB // 2 and u.memory_peak_bytes == GiB
    assert u.memory_byte_seconds == pytest.approx(0.75 * GiB * 10)
    assert u.network_rx_bytes == 110 and u.start_time.timestamp() == 1000.0 and u.end_time.timestamp() == 1010.0

    # Nothing changed since: nothing more is sent; a round with no new sample sends nothing.
    sent = len(repo.usage_reports)
    mgr.accounting.deliver()
    assert len(repo.usage_reports) == sent

    backend.now += 5
    backend.set(cpu_ns=6_000_000_000)
    mgr.transition(NAME, Action.DESTROY, "done")
    final = repo.latest()
    assert final.final and final.cpu_seconds == 6.0 and final.samples == 3
    assert mgr.accounting.usage(NAME) is None  # delivered: the book let it go
    mgr.accounting.run_once()
    assert repo.latest() == final


def test_oom_kills_are_recorded_as_limit_reached(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())
    backend.set(oom_kills=0, memory_limit=512 * 1024 ** 2)
    mgr.accounting.run_once()
    assert not [e for e in repo.events if e[1] is EventType.LIMIT_REACHED]
    round_later(mgr, backend, oom_kills=2)
    limits = [e for e in repo.events if e[1] is EventType.LIMIT_REACHED]
    assert limits == [(NAME, EventType.LIMIT_REACHED,
                       "2 programs killed for going past the memory limit of 512M")]
    assert mgr.state.get(NAME).state is State.RUNNING and repo.latest().oom_kills == 2
    round_later(mgr, backend)  # no more kills: no more events
    assert len([e for e in repo.events if e[1] is EventType.LIMIT_REACHED]) == 1


def test_limit_reached_waits_in_the_outbox_while_the_repository_is_down(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())
    mgr.accounting.run_once()
    repo.up = False
    round_later(mgr, backend, oom_kills=1)
    assert mgr.state.outbox_size() == 1
    repo.up = True
    mgr.flush()
    assert repo.events[-1][:2] == (NAME, EventType.LIMIT_REACHED)


def test_a_restart_keeps_the_totals(tmp_path):
    mgr, backend, repo = started(tmp_path)
    mgr.deploy(placed())
    backend.set(cpu_ns=1_000_000_000)
    mgr.accounting.run_once()
    round_later(mgr, backend, cpu_ns=3_000_000_000)
    assert repo.latest().cpu_seconds == 3.0
    stop(mgr)

    mgr = build(tmp_path, backend, repo)  # the manager restarts
    assert mgr.accounting.usage(NAME).cpu_seconds == 3.0
    round_later(mgr, backend, cpu_ns=5_000_000_000)
    u = repo.latest()
    assert u.cpu_seconds == 5.0 and u.samples == 3
    # The workspace restarted (its cgroup made again): the counter starts from zero again.
    round_later(mgr, backend, cpu_ns=500_000_000)
    assert repo.latest().cpu_seconds == 5.5
    stop(mgr)


def test_final_usage_survives_an_outage_and_a_restart(tmp_path):
    mgr, backend, repo = started(tmp_path)
    mgr.deploy(placed())
    backend.set(cpu_ns=0)
    mgr.accounting.run_once()
    repo.up = False
    backend.now += 10
    backend.set(cpu_ns=7_000_000_000)
    mgr.transition(NAME, Action.DESTROY, "bye")
    assert mgr.accounting.usage(NAME).final
    stop(mgr)

    repo.up = True
    mgr = build(tmp_path, backend, repo)
    mgr.accounting.run_once()  # not held any more: only its final figures to deliver
    final = repo.latest()
    assert final.final and final.cpu_seconds == 7.0
    assert mgr.accounting.usage(NAME) is None
    stop(mgr)


def test_a_workspace_that_vanished_gets_final_usage(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())
    backend.set(cpu_ns=0)
    mgr.accounting.run_once()
    round_later(mgr, backend, cpu_ns=2_000_000_000)
    del backend.accounts["u-wabcdefghijk"]  # gone behind the manager's back
    repo.records[NAME] = mgr.held.view(mgr.state.get(NAME))
    assert mgr.reconcile()["vanished"] == [NAME]
    final = repo.latest()
    assert final.final and final.cpu_seconds == 2.0


def test_destroy_right_after_create_still_records_final_usage(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())
    backend.set(cpu_ns=250_000_000)  # the setup script ran before any round
    mgr.transition(NAME, Action.DESTROY, "")
    final = repo.latest()
    assert final.final and final.samples == 1 and final.cpu_seconds == 0.25


def test_the_book_grows(tmp_path):
    mgr, backend, _ = started(tmp_path)
    names = [f"workspaces/w{i:011d}x" for i in range(40)]
    for n in names:
        mgr.deploy(placed(n))
        backend.set("u-" + n.split("/")[1], cpu_ns=0)
    assert mgr.accounting.run_once() == 40
    backend.now += 10
    for i, n in enumerate(names):
        backend.set("u-" + n.split("/")[1], cpu_ns=i * 1_000_000_000)
    mgr.accounting.run_once()
    assert [mgr.accounting.usage(n).cpu_seconds for n in names] == [float(i) for i in range(40)]
    stop(mgr)


def test_unreachable_repository_is_retried_next_round(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())
    repo.up = False
    mgr.accounting.run_once()
    assert repo.usage_reports == []
    repo.up = True
    round_later(mgr, backend)
    assert repo.latest().samples == 2


def test_a_refused_report_does_not_stop_the_round(parts):
    mgr, backend, repo = parts
    mgr.deploy(placed())

    def boom(manager, usages):
        raise Down()
    repo.report_usage = boom
    assert mgr.accounting.run_once() == 1
