"""The `cli` fixture: `vws` as a user runs it, against a stack of its own (`vws up` in a fresh
data directory, a manager whose accounts carry a tag of their own), torn down after the test."""
from __future__ import annotations

import pwd
import secrets
import subprocess

import pytest

from tests.e2e.runner import own_data_dir, run_vws
from tests.integration.stack import remove_cgroups


@pytest.fixture
def cli(tmp_path):
    tag = secrets.token_hex(2)
    _, env = own_data_dir(tmp_path, f"""
[manager]
name = "e2e-{tag}"
account_prefix = "ve{tag}-"
heartbeat_interval = "0.5s"
""")

    def vws(*args, input=None, check=None):
        extra = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        return run_vws(args, env, timeout=120, check=check, **extra)
    vws.tag = tag
    yield vws
    vws("down")
    for p in pwd.getpwall():
        if p.pw_name.startswith(f"ve{tag}-"):
            subprocess.run(["userdel", "-r", "-f", p.pw_name], capture_output=True)
    remove_cgroups(f"e2e-{tag}")
