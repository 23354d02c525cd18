"""What accounting costs a manager: one round of sampling 500 workspaces (their real cgroups'
counters read, folded by the accounting core, persisted, and the usage messages built for the
repository), as a share of one core when it runs once a second. The anchor is the budget itself:
5% of one core, i.e. 50 ms of CPU per second."""
from __future__ import annotations

import os
import secrets
import sys
import time

import pytest

from vws.common import converters, model
from vws.manager.accounting import UsageAccounting
from vws.manager.held import HeldWorkspaces, ManagerIdentity
from vws.manager.backends.base import HostHandle
from vws.manager.backends.host.cgroups import CgroupDriver
from vws.manager.state import LocalState, LocalWorkspace

WORKSPACES = 500
ROUNDS = 20
BUDGET = 0.05  # of one core, sampling once a second


class CgroupBackend:
    """Samples the workspaces' real cgroups, as the account and sandbox plug-ins do."""

    def __init__(self, driver: CgroupDriver):
        self.driver = driver

    def sample(self, handle: HostHandle):
        return self.driver.counters(handle.workspace_id)


class Receiver:
    """Stands for the repository: builds the messages a ReportUsage call would carry."""

    def __init__(self):
        self.bytes = 0

    def report_usage(self, manager, usages):
        self.bytes += sum(len(converters.usage_to_pb(u).SerializeToString()) for u in usages)
        return len(usages)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the sampling benchmark makes real cgroups: run as root", pytrace=False)
    tmp = tmp_path_factory.mktemp("sampling")
    driver = CgroupDriver("/sys/fs/cgroup", f"bench-{secrets.token_hex(3)}")
    state = LocalState(tmp / "state.db")
    wids = [f"w{i:011d}" for i in range(WORKSPACES)]
    for wid in wids:
        driver.create(wid)
        driver.set_limits(wid, memory_bytes=256 * 2 ** 20, cpu_millis=250, max_processes=128)
        state.insert(LocalWorkspace(name=f"workspaces/{wid}", spec=model.WorkspaceSpec(), state=model.State.RUNNING,
                                    host_identity=f"vws-{wid}", create_time=model.utcnow()))
    receiver = Receiver()
    backend = CgroupBackend(driver)
    held = HeldWorkspaces(ManagerIdentity("bench", ""), state, backend, receiver)
    accounting = UsageAccounting(held, backend, receiver, tmp / "usage.db", 1.0)
    yield accounting, receiver
    accounting.close()
    state.close()
    for wid in wids:
        driver.remove(wid)
    driver.remove_manager_dirs()


@pytest.mark.benchmark(group="accounting-sampling")
def test_sampling_500_workspaces_once_a_second(benchmark, sampled, report):
    accounting, receiver = sampled
    assert accounting.run_once() == WORKSPACES  # first round: the book fills
    cpu = []

    def one_round():
        t0 = time.process_time()
        assert accounting.run_once() == WORKSPACES
        cpu.append(time.process_time() - t0)
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    cpu.sort()
    median = cpu[len(cpu) // 2]
    share = median / 1.0  # one round a second
    print(f"\nsampling {WORKSPACES} workspaces: {median * 1000:.1f} ms of CPU a round "
          f"({receiver.bytes / ROUNDS / 1024:.0f} KiB of usage messages)", file=sys.stderr)
    report.row(f"accounting: sample {WORKSPACES} workspaces once a second (CPU per round, median of {ROUNDS})",
               f"{median * 1000:.1f} ms CPU = {share * 100:.1f}% of a core",
               f"budget {BUDGET * 1000:.0f} ms = {BUDGET * 100:.0f}% of a core", f"{share / BUDGET:.2f}x",
               "<= 1.00x of the budget" + (" (met)" if share <= BUDGET else " (MISSED)"))
