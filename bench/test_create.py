"""Create until READY, pool and dynamic accounts, beside a bare `useradd` + `userdel`."""
from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from bench.conftest import median, ms
from vws.common import clients
from vws.v1 import factory_pb2, repository_pb2, workspace_pb2

ROUNDS = 60
W = workspace_pb2.Workspace


def _create_ready(stack) -> tuple[float, str]:
    req = factory_pb2.CreateWorkspaceRequest(request_id=str(uuid.uuid4()), workspace=W(
        spec=workspace_pb2.WorkspaceSpec(kind=workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT, start_on_create=False)))
    t0 = time.perf_counter()
    r = clients.factory(stack.factory.address).CreateWorkspace(req, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.workspace.state == W.STATE_READY, r.workspace
    return elapsed, r.workspace.name


def _measure_creates(benchmark, stack, label, report):
    repo = clients.repository(stack.repository.address)
    samples, last = [], []

    def setup():
        if last:
            repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=last.pop()), timeout=60)
        return (), {}

    def target():
        elapsed, name = _create_ready(stack)
        samples.append(elapsed)
        last.append(name)
    for _ in range(5):  # warm channels and caches
        setup()
        target()
    samples.clear()
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1)
    setup()
    report.add_samples(label, samples)
    return samples


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
    _measure_creates(benchmark, stack, "create pool", report)
    _summarise(report, "create pool", 0.015)


@pytest.mark.benchmark(group="create-until-ready")
def test_create_dynamic_account(benchmark, stack_factory, report):
    stack = stack_factory(backend="dynamic-accounts")
    _measure_creates(benchmark, stack, "create dynamic", report)
    _summarise(report, "create dynamic", 0.040)


def _summarise(report, label, goal):
    anchor = report.samples.get("useradd+userdel")
    a = median(anchor) if anchor else float("nan")
    p50 = report.pct(label, 50)
    report.row(f"{label} until READY p50 / p99", f"{ms(p50)} / {ms(report.pct(label, 99))}",
               f"useradd+userdel p50 {ms(a)}", f"{p50 / a:.2f}x", f"p50 <= {ms(goal)}"
               + (" (met)" if p50 <= goal else " (MISSED)"))
