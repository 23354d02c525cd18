"""The `cli` fixture: `vws` as a user runs it, against a stack of its own (`vws up` in a fresh
data directory, a manager whose accounts carry a tag of their own), torn down after the test."""
from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import sys

import pytest

from tests.integration.stack import remove_cgroups

PY = sys.executable


@pytest.fixture
def cli(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end test makes real accounts: run it as root (CI does)", pytrace=False)
    tag = secrets.token_hex(2)
    data = tmp_path / "vws"
    data.mkdir()
    (data / "vws.toml").write_text(f"""
[manager]
name = "e2e-{tag}"
account_prefix = "ve{tag}-"
heartbeat_interval = "0.5s"
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VWS_")}
    env["VWS_DATA_DIR"] = str(data)

    def vws(*args, input=None, check=None):
        extra = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        r = subprocess.run([PY, "-m", "vws.cli.main", *args], capture_output=True, text=True, env=env,
                           timeout=120, **extra)
        if check is not None:
            assert r.returncode == check, (args, r.returncode, r.stdout, r.stderr)
        return r
    vws.tag = tag
    yield vws
    vws("down")
    for p in pwd.getpwall():
        if p.pw_name.startswith(f"ve{tag}-"):
            subprocess.run(["userdel", "-r", "-f", p.pw_name], capture_output=True)
    remove_cgroups(f"e2e-{tag}")
