"""The fuzz run's stack, made once for the session, and its figures printed at the end:
requests sent, statuses by code, and every distinct failure."""
from __future__ import annotations

import os

import pytest

from tests.fuzz.run import Run

_RUNS: list[Run] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/fuzz" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def fuzz(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the fuzz suite runs a real stack that makes accounts: run it as root (CI does)", pytrace=False)
    run = Run(tmp_path_factory.mktemp("fuzz"))
    _RUNS.append(run)
    yield run
    run.close()


def pytest_terminal_summary(terminalreporter):
    for run in _RUNS:
        terminalreporter.section("fuzz summary")
        for line in run.ledger.summary().splitlines():
            terminalreporter.write_line(line)
