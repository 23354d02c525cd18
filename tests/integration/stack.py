"""A real stack for integration tests: each service its own process (`python -m vws.cli.main
<service>`), on ephemeral ports, with its own data directory, so that tests can kill -9 any of
them and start it again. Managers make real accounts under a prefix unique to the test."""
from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vws.common import clients
from vws.manager.backends.base import BackendSettings
from vws.manager.backends.sandbox.backend import reap_all_under
from vws.manager.backends.host.disk import release_all_under

PY = sys.executable
_PKI = None


def site_pki():
    """The test session's site PKI (one CA for every stack of the session), made once; this
    process calls every stack with its administrator credential."""
    global _PKI
    from vws.common import tls
    if _PKI is None:
        from vws.common.auth import pki
        d = pathlib.Path(tempfile.mkdtemp(prefix="vws-test-pki-"))
        atexit.register(shutil.rmtree, d, True)
        _PKI = pki.ensure_dir(d / "pki")
    admin = tls.Identity(_PKI.ca_pem(), _PKI.admin.cert_pem(), _PKI.admin.key_pem())
    if clients.identity() != admin:  # an in-process server of an earlier test may have set its own
        clients.use(admin)
    return _PKI


def tls_loopback(host: str) -> bool:
    from vws.common import tls
    return tls.is_loopback(f"{host}:0")


def credential_env(local_pki=None) -> dict[str, str]:
    """What a `vws` command run by a test needs to call as the administrator."""
    local_pki = local_pki or site_pki()
    return {"VWS_CA": str(local_pki.ca.cert), "X509_USER_CERT": str(local_pki.admin.cert),
            "X509_USER_KEY": str(local_pki.admin.key)}


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Process:
    def __init__(self, service: str, data_dir: pathlib.Path, flags: list[str], env: dict[str, str],
                 prefix: list[str] | tuple[str, ...] = ()):
        """prefix: what the command runs under, e.g. nsenter into a network namespace."""
        self.service, self.data_dir, self.flags, self.env = service, data_dir, flags, env
        self.prefix = list(prefix)
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.log_path = data_dir / f"{service}.log"

    def start(self, timeout: float = 30.0) -> "Process":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run = self.data_dir / "run" / f"{self.service}.json"
        run.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.prefix, PY, "-m", "vws.cli.main", self.service, "--data-dir", str(self.data_dir),
                                      "--log-level", "DEBUG", *self.flags],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.service} exited {self.proc.returncode}:\n{self.log()}")
            try:
                info = json.loads(run.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            if info.get("pid") != self.proc.pid:
                return False
            # a channel of its own: a cached one to a port an earlier test's server used may
            # still be backing off
            plain = "--insecure" in self.flags
            with (grpc.insecure_channel(info["address"]) if plain else clients.new_channel(info["address"])) as channel:
                try:
                    r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.RpcError:
                    return False
            return info["address"] if r.status == health_pb2.HealthCheckResponse.SERVING else False
        self.address = wait_until(ready, timeout, what=f"{self.service} to serve")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(timeout=30)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


class Stack:
    """Repository + factory + any number of managers, each in its own process."""

    def __init__(self, root: pathlib.Path, repository_flags=(), factory_flags=(), host: str = "127.0.0.1"):
        """host: the address the repository and the factory serve on (managers: see add_manager)."""
        self.root, self.host = root, host
        self.tag = secrets.token_hex(2)
        self.pki = site_pki()
        if not tls_loopback(host):  # the repository's and factory's certificates must name it
            from vws.common.auth import pki
            pki.ensure_dir(self.pki.directory, hosts=[host])
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k in list(self.env):
            if k.startswith("VWS_"):
                del self.env[k]
        self.env["VWS_PKI_DIR"] = str(self.pki.directory)
        self.repository = Process("repository", root / "repository",
                                  ["--listen", f"{host}:0", "--heartbeat-timeout", "1.5s",
                                   "--expiry-interval", "0.2s", *repository_flags], self.env)
        self.factory: Process | None = None
        self._factory_flags = list(factory_flags)
        self.managers: dict[str, Process] = {}

    @property
    def prefix(self) -> str:
        return f"vt{self.tag}-"

    def start(self, managers: int = 1, **manager_options) -> "Stack":
        self.repository.start()
        self.factory = Process("factory", self.root / "factory",
                               ["--listen", f"{self.host}:0", "--repository", self.repository.address,
                                "--resume-interval", "0.5s", *self._factory_flags], self.env).start()
        for i in range(managers):
            self.add_manager(f"m{i}", **manager_options)
        return self

    def add_manager(self, name: str, backend: str = "dynamic-accounts", host: str = "127.0.0.1",
                    prefix: tuple[str, ...] = (), **options) -> Process:
        """host: the address it serves on; prefix: what it runs under (a network namespace)."""
        flags = ["--listen", f"{host}:0", "--repository", self.repository.address, "--name",
                 f"t{self.tag}-{name}", "--backend", backend, "--account-prefix", f"{self.prefix}{name}-",
                 "--pool-prefix", f"vp{self.tag}{name}", "--heartbeat-interval", "0.2s", "--quarantine", "0s",
                 "--cpu", "64"]  # CPU is not what these tests are about; admission by CPU is tested apart
        for k, v in options.items():
            flags += ["--" + k.replace("_", "-"), str(v)]
        data_dir = self.root / f"manager-{name}"
        if not tls_loopback(host):
            # A manager on another host has a certificate of its own, naming its address.
            cert, key = self.pki.issue_manager(f"t{self.tag}-{name}", hosts=[host])
            data_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / "manager.pem").write_bytes(cert)
            (data_dir / "manager.key").write_bytes(key)
            (data_dir / "manager.key").chmod(0o600)
            flags += ["--certificate", str(data_dir / "manager.pem"), "--private-key", str(data_dir / "manager.key"),
                      "--ca", str(self.pki.ca.cert)]
        p = Process("manager", data_dir, flags, self.env, prefix).start()
        self.managers[name] = p
        return p

    def manager_name(self, name: str) -> str:
        return f"managers/t{self.tag}-{name}"

    def accounts(self) -> list[str]:
        """Every account on the host made by this stack's managers."""
        return sorted(p.pw_name for p in pwd.getpwall()
                      if p.pw_name.startswith(self.prefix) or p.pw_name.startswith(f"vp{self.tag}"))

    def cli_argv(self, *args: str) -> list[str]:
        return [PY, "-m", "vws.cli.main", *args]

    def cli_env(self) -> dict[str, str]:
        return {**self.env, "VWS_ENDPOINT": self.factory.address, **credential_env(self.pki)}

    def cli(self, *args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.cli_argv(*args), capture_output=True, input=input, env=self.cli_env(),
                              timeout=timeout)

    def close(self) -> None:
        for p in list(self.managers.values()):
            p.stop()
        for p in (self.factory, self.repository):
            if p:
                p.stop()
        # Whatever a failed test left behind goes too, so that no account leaks from the suite.
        reap_all_under(self.root)  # sandbox inits (root, own sessions), their veths and addresses
        accounts = self.accounts()
        for name in accounts:
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        release_all_under(self.root)  # workspaces' own filesystems (mounted on their homes)
        for name in accounts:
            subprocess.run(["userdel", "-r", "-f", name], capture_output=True)
        for name in self.managers:
            remove_cgroups(f"t{self.tag}-{name}")
        remove_domains(f"managers/t{self.tag}-")


@contextlib.contextmanager
def domains_of(manager_prefix: str):
    """Yields [(domain, (its workspace's name, its manager's name), its XML)] of the libvirt domains whose vws metadata
    names a manager under manager_prefix (none without libvirt), the connection open meanwhile."""
    try:
        import libvirt
        from vws.manager.backends.vm import domain
    except ImportError:
        yield []
        return
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        yield []
        return
    try:
        found = []
        for d in conn.listAllDomains(0):
            try:
                xml = d.XMLDesc(0)
            except libvirt.libvirtError:
                continue
            owner = domain.workspace_of(xml)
            if owner and owner[1].startswith(manager_prefix):
                found.append((d, owner, xml))
        yield found
    finally:
        conn.close()


def remove_domains(manager_prefix: str) -> list[str]:
    """The libvirt domains a test's managers left (found by their vws metadata): powered off
    and undefined. Returns their names."""
    removed = []
    with domains_of(manager_prefix) as found:
        for d, _, xml in found:
            import libvirt
            if d.isActive():
                d.destroy()
            d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            removed.append(d.name())
            # Its bridge and veth pair (backends.vm), and the link's address reservation.
            for index in re.findall(r"<source bridge=.vwsb(\d+).", xml):
                for dev in (f"vwsb{index}", f"vwsn{index}"):
                    subprocess.run(["ip", "link", "del", dev], capture_output=True)
                pathlib.Path(f"/run/vws/net/{index}").unlink(missing_ok=True)
    return removed


def reclaim_everything(backend) -> None:
    """Whatever a test left on a backend it drove directly: every workspace it holds reclaimed,
    a pool's accounts removed, the backend closed."""
    try:
        for hid in list(backend.inventory()):
            backend.reclaim(hid)
        if hasattr(backend, "remove_accounts"):
            backend.remove_accounts()
    finally:
        backend.close()


def remove_accounts(prefix: str) -> None:
    """Accounts a test's backend made under its prefix, their processes killed first."""
    if not prefix:
        return
    for pw in pwd.getpwall():
        if pw.pw_name.startswith(prefix):
            subprocess.run(["pkill", "-KILL", "-u", pw.pw_name], capture_output=True)
            subprocess.run(["userdel", "--remove", "--force", pw.pw_name], capture_output=True)


@contextlib.contextmanager
def driven(backend, prefixes, *also):
    """Yields a backend a test drives directly; afterwards reclaims all it holds, runs the
    `also` clean-ups (each a callable), and removes the accounts under the test's `prefixes`."""
    try:
        yield backend
    finally:
        try:
            reclaim_everything(backend)
        finally:
            for clean in also:
                clean()
            for prefix in prefixes:
                remove_accounts(prefix)


def new_wid() -> str:
    """A workspace id of the form a manager gives."""
    return "w" + secrets.token_hex(6)[:11]


def driven_settings(kind: str, letter: str, state_dir: pathlib.Path, **more) -> BackendSettings:
    """Settings of a backend a test drives directly; its names carry `letter` and a tag of their own
    (manager `<letter><tag>`, accounts `vw<letter><tag>-`, a pool of 2 named `vw<letter><tag>p`)."""
    tag = secrets.token_hex(3)
    return BackendSettings(kind=kind, manager_id=f"{letter}{tag}", state_dir=state_dir,
                           account_prefix=f"vw{letter}{tag}-", pool_prefix=f"vw{letter}{tag}p", pool_size=2, **more)


def remove_cgroups(manager_id: str) -> None:
    """The cgroups a test's manager left for workspaces the test did not destroy."""
    for top in glob.glob(f"/sys/fs/cgroup/*/vws/{manager_id}") + glob.glob(f"/sys/fs/cgroup/vws/{manager_id}"):
        for root, dirs, _ in sorted(os.walk(top), key=lambda e: -e[0].count("/")):
            try:
                os.rmdir(root)
            except OSError:
                pass
