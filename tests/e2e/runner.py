"""`vws` run as a user runs it (`python -m vws.cli.main`), against a data directory of the test's
own: no VWS_ setting of the caller's environment leaks in."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

PY = sys.executable


def own_data_dir(tmp_path: pathlib.Path, toml: str) -> tuple[pathlib.Path, dict[str, str]]:
    """A data directory holding `toml` as its vws.toml, and the environment that points `vws` at it."""
    if os.geteuid() != 0:
        pytest.fail("the end-to-end test makes real accounts: run it as root (CI does)", pytrace=False)
    data = tmp_path / "vws"
    data.mkdir()
    (data / "vws.toml").write_text(toml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VWS_")}
    env["VWS_DATA_DIR"] = str(data)
    return data, env


def run_vws(args, env: dict[str, str], timeout: float, check: int | None, **extra) -> subprocess.CompletedProcess:
    """`vws *args`, its output as text; asserts it exits `check` unless that is None."""
    r = subprocess.run([PY, "-m", "vws.cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout,
                       check=False, **extra)
    if check is not None:
        assert r.returncode == check, (args, r.returncode, r.stdout, r.stderr)
    return r
