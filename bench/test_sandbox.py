"""Sandbox create until READY and until RUNNING, through the whole stack (factory, manager,
repository) and at the backend alone, beside a bare `bwrap --unshare-all --ro-bind / / true`
(and `crun run` of a minimal bundle when crun is installed and runs here: on a host with cgroup v1
plus an empty v2 it refuses, "cgroups in hybrid mode not supported") measured in the same run.
Goal: create until READY p50 <= 100 ms."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.conftest import measure_creates, median, ms
from vws.common import model
from vws.manager.backends.base import BackendSettings
from vws.manager.backends.sandbox.backend import SandboxBackend
from vws.v1 import workspace_pb2

ROUNDS = 40
W = workspace_pb2.Workspace
GOAL = 0.100

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")


def _anchor_bwrap(report) -> None:
    samples = []
    for i in range(ROUNDS + 5):
        t0 = time.perf_counter()
        subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "true"], check=True)
        if i >= 5:
            samples.append(time.perf_counter() - t0)
    report.add_samples("bwrap true", samples)


def _anchor_crun(report) -> None:
    if shutil.which("crun") is None:
        return
    with tempfile.TemporaryDirectory() as d:
        bundle = Path(d)
        spec = subprocess.run(["crun", "spec"], cwd=bundle, capture_output=True)
        if spec.returncode != 0:
            return
        config = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": "/", "readonly": True}
        config["process"]["args"] = ["true"]
        config["process"]["terminal"] = False
        (bundle / "config.json").write_text(json.dumps(config))
        samples = []
        for i in range(ROUNDS + 5):
            name = f"vwsb{secrets.token_hex(4)}"
            t0 = time.perf_counter()
            r = subprocess.run(["crun", "run", "--bundle", str(bundle), name], capture_output=True)
            if r.returncode != 0:
                return
            if i >= 5:
                samples.append(time.perf_counter() - t0)
        report.add_samples("crun run true", samples)


@pytest.mark.benchmark(group="sandbox-create")
def test_anchor_bare_sandboxes(benchmark, report):
    benchmark.pedantic(lambda: _anchor_bwrap(report), rounds=1, iterations=1)
    _anchor_crun(report)


@pytest.mark.benchmark(group="sandbox-create")
def test_sandbox_backend_realise_start(benchmark, tmp_path, report):
    """The backend alone: account, cgroups, home filesystem, bwrap init, veth, tc."""
    tag = secrets.token_hex(3)
    b = SandboxBackend(BackendSettings(kind="sandbox", manager_id=f"b{tag}", state_dir=tmp_path / "state",
                                       account_prefix=f"vwb{tag}-"))
    spec = model.WorkspaceSpec(kind=model.Kind.SANDBOX,
                               resources=model.Resources(network_bits_per_second=100_000_000))
    realise, start, handles = [], [], []

    def target():
        wid = "w" + secrets.token_hex(6)[:11]
        t0 = time.perf_counter()
        h = b.realise(wid, spec)
        t1 = time.perf_counter()
        b.start(h)
        t2 = time.perf_counter()
        realise.append(t1 - t0)
        start.append(t2 - t0)
        handles.append(h)

    def setup():
        while handles:
            b.destroy(handles.pop())
        return (), {}
    try:
        for _ in range(3):
            setup()
            target()
        realise.clear()
        start.clear()
        benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        setup()
        for hid in list(b.inventory()):
            b.reclaim(hid)
        b.close()
    report.add_samples("backend realise", realise)
    report.add_samples("backend realise+start", start)
    _summarise(report, "backend realise", "backend realise (READY)")
    _summarise(report, "backend realise+start", "backend realise+start (RUNNING)")


@pytest.mark.parametrize("start", [False, True], ids=["until-READY", "until-RUNNING"])
@pytest.mark.benchmark(group="sandbox-create")
def test_create_sandbox(benchmark, stack_factory, report, start):
    stack = stack_factory(backend="dynamic-accounts")
    label = "create sandbox " + ("until RUNNING" if start else "until READY")
    measure_creates(benchmark, stack, report, label, workspace_pb2.WorkspaceSpec.KIND_SANDBOX, start, ROUNDS, warm=5)
    _summarise(report, label, label)


def _summarise(report, label: str, what: str) -> None:
    anchor = report.samples.get("bwrap true")
    a = median(anchor) if anchor else float("nan")
    crun = report.samples.get("crun run true")
    anchor_text = f"bwrap true p50 {ms(a)}" + (f", crun p50 {ms(median(crun))}" if crun else "")
    p50 = report.pct(label, 50)
    report.row(f"{what} p50 / p99", f"{ms(p50)} / {ms(report.pct(label, 99))}", anchor_text, f"{p50 / a:.2f}x",
               f"p50 <= {ms(GOAL)}" + (" (met)" if p50 <= GOAL else " (MISSED)"))
