"""Benchmarks: each target measured beside its anchor in the same run, reported as a ratio.

Run with `make bench` (not part of `make test`). Needs root: the stacks make real accounts.
The summary table is printed at the end and written to bench/results/summary.md."""
from __future__ import annotations

import os
import pathlib
import statistics
import time
import uuid

import pytest

from tests.integration.stack import Stack

RESULTS = pathlib.Path(__file__).parent / "results"


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str, str]] = []
        self.samples: dict[str, list[float]] = {}
        self.notes: list[tuple[str, str]] = []  # (title, text) printed after the table

    def add_samples(self, name: str, seconds: list[float]) -> None:
        self.samples[name] = sorted(seconds)

    def pct(self, name: str, p: float) -> float:
        data = self.samples[name]
        return data[min(len(data) - 1, int(round(p / 100 * (len(data) - 1))))]

    def row(self, what: str, measured: str, anchor: str, ratio: str, goal: str) -> None:
        self.rows.append((what, measured, anchor, ratio, goal))

    def note(self, title: str, text: str) -> None:
        self.notes.append((title, text))

    def render(self) -> str:
        head = ("what", "measured", "anchor (same run)", "ratio", "goal")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(5)]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
        table = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in self.rows)]
        return "\n".join(table + [f"\n{title}\n\n{text}" for title, text in self.notes])


_REPORT = Report()


@pytest.fixture(scope="session")
def report():
    return _REPORT


def pytest_terminal_summary(terminalreporter):
    if _REPORT.rows or _REPORT.notes:
        RESULTS.mkdir(exist_ok=True)
        text = _REPORT.render()
        (RESULTS / "summary.md").write_text(text + "\n")
        terminalreporter.write_sep("=", "targets beside their anchors (bench/results/summary.md)")
        terminalreporter.write_line(text)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def median(xs):
    return statistics.median(xs)


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("benchmarks make real accounts: run as root", pytrace=False)
    made = []

    def make(**manager_options):
        s = Stack(tmp_path_factory.mktemp("stack"))
        made.append(s)
        return s.start(1, **manager_options)
    yield make
    for s in made:
        s.close()


def measure_creates(benchmark, stack, report, label: str, kind: int, start: bool = False,
                    rounds: int = 60, warm: int = 5) -> list[float]:
    """Creates through the factory until READY (or RUNNING: `start`), each deleted before the
    next, `warm` of them first to warm channels and caches; the samples go to `report` as `label`."""
    from vws.common import clients
    from vws.v1 import factory_pb2, repository_pb2, workspace_pb2
    W = workspace_pb2.Workspace
    repo, factory = clients.repository(stack.repository.address), clients.factory(stack.factory.address)
    samples, last = [], []

    def setup():
        if last:
            repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=last.pop()), timeout=60)
        return (), {}

    def target():
        req = factory_pb2.CreateWorkspaceRequest(request_id=str(uuid.uuid4()), workspace=W(
            spec=workspace_pb2.WorkspaceSpec(kind=kind, start_on_create=start)))
        t0 = time.perf_counter()
        r = factory.CreateWorkspace(req, timeout=60)
        samples.append(time.perf_counter() - t0)
        assert r.workspace.state == (W.STATE_RUNNING if start else W.STATE_READY), r.workspace
        last.append(r.workspace.name)
    for _ in range(warm):
        setup()
        target()
    samples.clear()
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1)
    setup()
    report.add_samples(label, samples)
    return samples
