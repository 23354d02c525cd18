"""Create until READY, pool and dynamic accounts, beside a bare `useradd` + `userdel`."""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from bench.conftest import RESULTS, measure_creates, median, ms
from vws.v1 import workspace_pb2

ROUNDS = 60
K = workspace_pb2.WorkspaceSpec


def _bare_useradd_userdel(benchmark, report):
    samples = []

    def target():
        name = "vwb" + uuid.uuid4().hex[:8]
        t0 = time.perf_counter()
        subprocess.run(["useradd", "--create-home", name], check=True)
        subprocess.run(["userdel", "-r", name], check=True, capture_output=True)
        samples.append(time.perf_counter() - t0)
    benchmark.pedantic(target, rounds=ROUNDS, iterations=1)
    report.add_samples("useradd+userdel", samples)


@pytest.mark.benchmark(group="create-until-ready")
def test_anchor_bare_useradd_userdel(benchmark, report):
    _bare_useradd_userdel(benchmark, report)


@pytest.mark.benchmark(group="create-until-ready")
def test_create_pool_account(benchmark, stack_factory, report):
    stack = stack_factory(backend="account-pool", pool_size=4)
    measure_creates(benchmark, stack, report, "create pool", K.KIND_UNIX_ACCOUNT, rounds=ROUNDS)
    _summarise(report, "create pool", 0.015)


@pytest.mark.benchmark(group="create-until-ready")
def test_create_dynamic_account(benchmark, stack_factory, report):
    stack = stack_factory(backend="dynamic-accounts")
    measure_creates(benchmark, stack, report, "create dynamic", K.KIND_UNIX_ACCOUNT, rounds=ROUNDS)
    _summarise(report, "create dynamic", 0.040)


def _summarise(report, label, goal):
    anchor = report.samples.get("useradd+userdel")
    a = median(anchor) if anchor else float("nan")
    p50 = report.pct(label, 50)
    report.row(f"{label} until READY p50 / p99", f"{ms(p50)} / {ms(report.pct(label, 99))}",
               f"useradd+userdel p50 {ms(a)}", f"{p50 / a:.2f}x", f"p50 <= {ms(goal)}"
               + (" (met)" if p50 <= goal else " (MISSED)"))


BREAKDOWN_CREATES = 10


@pytest.mark.parametrize("backend,options", [("account-pool", {"pool_size": BREAKDOWN_CREATES + 2}),
                                             ("dynamic-accounts", {})])
def test_create_breakdown_per_hop(benchmark, tmp_path, report, backend, options):
    """Each hop of a create (calls per create, time per call) from cProfile of every service.
    The profiled run is the benchmark's one round, so that `make bench` (--benchmark-only) runs it."""
    from bench.breakdown import breakdown, profile_creates
    stats = benchmark.pedantic(profile_creates, args=(tmp_path, RESULTS / "profiles" / backend, BREAKDOWN_CREATES,
                                                      K.KIND_UNIX_ACCOUNT), kwargs=dict(backend=backend, **options),
                               rounds=1, iterations=1)
    assert {"repository", "factory", "manager"} <= set(stats), f"profiles written: {sorted(stats)}"
    report.note(f"one {backend} create, per hop ({BREAKDOWN_CREATES} creates, every process under cProfile)",
                breakdown(stats, BREAKDOWN_CREATES))
