"""Shared fixtures. `database_url` runs a test on SQLite (a temporary file) and on a real
PostgreSQL server: a throwaway cluster started for the session from Debian's `postgresql`
package, or the server named by VWS_TEST_POSTGRES_URL. Missing PostgreSQL binaries fail the
tests that need them (they are never skipped)."""
from __future__ import annotations

import glob
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> pathlib.Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(pathlib.Path(p).parts[-3]) if pathlib.Path(p).parts[-3].isdigit() else 0)
    if not candidates:
        found = shutil.which("initdb")
        if found:
            return pathlib.Path(found).parent
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: "
                    "install Debian's `postgresql` package (scripts/setup-system.sh does) or set "
                    "VWS_TEST_POSTGRES_URL=postgresql+psycopg://user@host:port/db", pytrace=False)
    return pathlib.Path(candidates[-1]).parent


class _Cluster:
    """initdb + pg_ctl in a temporary directory, as the `postgres` user when run as root
    (initdb refuses root)."""

    def __init__(self):
        self.bin = _pg_bin()
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="vws-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.prefix: list[str] = []
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail("running as root, PostgreSQL needs the `postgres` system user (Debian's "
                            "`postgresql` package makes it)", pytrace=False)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
            self.user = "postgres"

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(self.prefix + list(argv), capture_output=True, text=True, cwd=self.root)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)

    def start(self) -> str:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "-E", "UTF8", "--no-instructions")
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(self.prefix + [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                      "-w", "stop"], capture_output=True, cwd=self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url():
    """URL (SQLAlchemy form) of a PostgreSQL server whose `postgres` database may create others."""
    env = os.environ.get("VWS_TEST_POSTGRES_URL")
    if env:
        yield env
        return
    cluster = _Cluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _fresh_postgres_database(server_url: str) -> tuple[str, callable]:
    import sqlalchemy as sa
    url = sa.engine.make_url(server_url)
    name = "vws_test_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop():
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """An empty database (no tables) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'repository.db'}"
        return
    url, drop = _fresh_postgres_database(request.getfixturevalue("postgres_server_url"))
    try:
        yield url
    finally:
        drop()


def pytest_runtest_setup(item):
    """`@pytest.mark.requires(missing, why)`: a test needs something CI always has (root, a built
    extension, a compiler, bubblewrap). When it is missing the test fails saying so, instead of
    being skipped: a skipped check cannot fail."""
    for mark in item.iter_markers("requires"):
        missing, why = mark.args
        if missing:
            pytest.fail(why, pytrace=False)
