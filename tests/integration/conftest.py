import os
import secrets
import subprocess

import pytest

from tests.integration.stack import Stack


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/integration" in str(item.fspath) or "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.root)


@pytest.fixture
def stack_factory(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("integration tests make real accounts: run them as root (CI does)", pytrace=False)
    made = []

    def make(managers=1, repository_flags=(), factory_flags=(), **manager_options):
        s = Stack(tmp_path / f"stack{len(made)}", repository_flags, factory_flags)
        made.append(s)
        return s.start(managers, **manager_options)
    yield make
    for s in made:
        s.close()


@pytest.fixture
def stack(stack_factory):
    return stack_factory()


@pytest.fixture
def unix_group():
    """A Unix group of the host made for the test (a site's group a policy names), then removed."""
    name = f"vwsg{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    yield name
    subprocess.run(["groupdel", name], capture_output=True)
