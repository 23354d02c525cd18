"""The chaos run's stack, made once for the session, and its figures printed at the end:
rounds, kills per service, operations by outcome, findings by kind."""
from __future__ import annotations

import os
import random

import pytest

from tests.chaos.rounds import Chaos

_RUNS: list[Chaos] = []
# make test runs a few rounds of a fixed seed; make chaos many, of a seed drawn afresh.
ROUNDS = int(os.environ.get("VWS_CHAOS_ROUNDS", "3"))


def seed() -> int:
    given = os.environ.get("VWS_CHAOS_SEED", "17")
    return random.SystemRandom().randrange(2 ** 32) if given == "random" else int(given)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/chaos" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def chaos(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the chaos suite kills a real stack that makes accounts: run it as root (CI does)", pytrace=False)
    run = Chaos(tmp_path_factory.mktemp("chaos"), seed(),
                settle_bound=float(os.environ.get("VWS_CHAOS_SETTLE", "60")))
    _RUNS.append(run)
    yield run
    run.close()


def pytest_terminal_summary(terminalreporter):
    for run in _RUNS:
        terminalreporter.section("chaos summary")
        for line in run.summary().splitlines():
            terminalreporter.write_line(line)
