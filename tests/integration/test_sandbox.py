"""The SANDBOX backend against the real host: real accounts, bubblewrap namespaces, veth pairs and
tc. Needs root and bwrap; every account, sandbox, interface and reservation the tests make is
removed, even when a test fails."""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.stack import driven, remove_cgroups

from vws.common import errors, model
from vws.manager.backends.host import netshape
from vws.manager.backends.account.leftovers import uid_pids
from vws.manager.backends.account.users import getpw, is_locked
from vws.manager.backends.base import BackendSettings, ExecOptions, HostHandle
from vws.common.host import alive as _alive
from vws.manager.backends.sandbox.backend import SandboxBackend, reap_all_under

pytestmark = [pytest.mark.root,
              pytest.mark.requires(os.geteuid() != 0, "needs root: makes real Unix accounts"),
              pytest.mark.requires(shutil.which("bwrap") is None, "needs bubblewrap (scripts/setup-system.sh)")]


def _wid() -> str:
    return "w" + secrets.token_hex(6)[:11]


@pytest.fixture
def backend(tmp_path):
    tag = secrets.token_hex(3)
    settings = BackendSettings(kind="sandbox", manager_id=f"s{tag}", state_dir=tmp_path / "state",
                               account_prefix=f"vws{tag}-")
    b = SandboxBackend(settings)
    # whatever survived a failure: sandboxes, interfaces, reservations, accounts
    with driven(b, (settings.account_prefix,), lambda: reap_all_under(settings.state_dir),
                lambda: remove_cgroups(settings.manager_id)):
        yield b


def spec(bits: int = 0, setup: str = "") -> model.WorkspaceSpec:
    return model.WorkspaceSpec(kind=model.Kind.SANDBOX, resources=model.Resources(network_bits_per_second=bits),
                               software=model.Software(setup_script=setup))


def run(b, h, script: str, timeout: float = 20) -> tuple[int, str, str]:
    p = b.spawn(h, ExecOptions(["/bin/sh", "-c", script]))
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out.decode(), err.decode()


def ok(b, h, script: str, timeout: float = 20) -> str:
    code, out, err = run(b, h, script, timeout)
    assert code == 0, (script, code, out, err)
    return out


def running(b, wid) -> HostHandle:
    h = b.realise(wid, spec())
    b.start(h)
    return h


def live(uid: int) -> list[int]:
    """The uid's processes that still run (a killed one may be a zombie for a moment)."""
    return [p for p in uid_pids(uid) if _alive(p)]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_isolation(backend):
    wid, other = _wid(), _wid()
    h, h2 = running(backend, wid), running(backend, other)
    pw = getpw(h.host_identity)
    assert ok(backend, h, "id -un").strip() == h.host_identity
    assert ok(backend, h, "hostname").strip() == wid
    assert ok(backend, h, "pwd").strip() == pw.pw_dir
    # PID namespace: the init (bwrap, pid 1), its sleep, and this exec's own processes only
    procs = ok(backend, h, "ps -e -o pid=,comm=").split("\n")
    comms = sorted(line.split()[1] for line in procs if line.strip())
    assert comms == ["bwrap", "ps", "sh", "sleep"], procs
    assert ok(backend, h, "echo $$").strip() != "1"
    # mounts: only its own home under /home; nothing of root's; the root is read-only
    assert ok(backend, h, "ls -A /home").split() == [h.host_identity]
    assert ok(backend, h, f"test -e /home/{h2.host_identity} || echo absent").strip() == "absent"
    assert ok(backend, h, "test -e /root || echo absent").strip() == "absent"
    for path in ("/x", "/etc/x", "/usr/x", "/var/x", "/usr/bin/x"):
        code, _, err = run(backend, h, f"touch {path}")
        assert code != 0 and ("Read-only" in err or "Permission denied" in err), (path, err)
    ok(backend, h, "touch ~/in-home /tmp/in-tmp /var/tmp/in-var-tmp /dev/shm/in-shm")
    assert (Path(pw.pw_dir) / "in-home").exists()
    # /tmp is private: neither the host's nor another sandbox's
    marker = Path("/tmp") / f"vws-host-{secrets.token_hex(4)}"
    marker.write_text("host")
    try:
        assert ok(backend, h, f"test -e {marker} || echo absent").strip() == "absent"
    finally:
        marker.unlink()
    assert not Path("/tmp/in-tmp").exists()
    assert ok(backend, h2, "ls -A /tmp").split() == []
    # network: its own interface and address, nothing of the host's
    link = backend.link(h)
    addrs = ok(backend, h, "ip -o -4 addr show")
    assert link.inner_addr in addrs and "127.0.0.1" in addrs and len(addrs.strip().splitlines()) == 2, addrs
    assert backend.link(h2).index != link.index
    # the user's processes are in the workspace's cgroup, as the account's
    ok(backend, h, "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")
    deadline = time.monotonic() + 5
    while not (sleeper := [p for p in uid_pids(pw.pw_uid) if _comm(p) == "sleep"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sleeper and set(sleeper) <= backend.cgroups.pids(wid)


def test_working_directory_stays_inside_the_home(backend):
    h = running(backend, _wid())
    ok(backend, h, "mkdir sub && ln -s /root out")
    for outside in ("../../root", "/root", "out"):
        with pytest.raises(errors.InvalidArgument) as e:
            backend.spawn(h, ExecOptions(["pwd"], {}, outside))
        assert e.value.violations[0][0] == "working_directory", outside
    p = backend.spawn(h, ExecOptions(["pwd"], {}, "sub"))
    assert p.communicate(timeout=20)[0].decode().strip().endswith("/sub")


def test_every_exec_enters_the_same_sandbox(backend):
    h = running(backend, _wid())
    ok(backend, h, "echo hello > /tmp/shared")
    assert ok(backend, h, "cat /tmp/shared").strip() == "hello"
    ok(backend, h, "setsid sleep 777 >/dev/null 2>&1 < /dev/null &")
    assert "sleep 777" in ok(backend, h, "ps -e -o args=")
    # stdin, environment and working directory travel as for accounts
    ok(backend, h, "mkdir -p ~/sub")
    p = backend.spawn(h, ExecOptions(["sh", "-c", 'cat; echo "$GREETING"; pwd'], {"GREETING": "hi"}, "sub"))
    out, _ = p.communicate(b"from stdin\n", timeout=10)
    assert out.decode().split("\n")[:3] == ["from stdin", "hi", f"{getpw(h.host_identity).pw_dir}/sub"]
    # exit statuses and signals come back through nsenter
    assert run(backend, h, "exit 7")[0] == 7
    assert run(backend, h, "kill -TERM $$")[0] == -signal.SIGTERM


def test_the_policys_unix_group_reaches_programs_in_the_sandbox(backend, unix_group):
    s = spec()
    h = backend.realise(_wid(), dataclasses.replace(s, software=dataclasses.replace(s.software, unix_group=unix_group)))
    backend.start(h)
    assert unix_group in ok(backend, h, "id -nG").split()


def test_setup_script_runs_in_the_sandbox(backend):
    wid = _wid()
    h = backend.realise(wid, spec(setup="hostname > ~/setup-host; echo x > /tmp/setup-tmp; sleep 600 &"))
    pw = getpw(h.host_identity)
    assert (Path(pw.pw_dir) / "setup-host").read_text().strip() == wid
    assert not live(pw.pw_uid)  # what it left in the background is gone: READY runs nothing
    assert is_locked(h.host_identity)
    backend.start(h)
    assert ok(backend, h, "cat /tmp/setup-tmp").strip() == "x"


def test_pause_resume_stop_start_destroy(backend):
    wid = _wid()
    h = running(backend, wid)
    pw = getpw(h.host_identity)
    ok(backend, h, "setsid sh -c 'while :; do date +%s%N > ~/tick.new; mv ~/tick.new ~/tick; sleep 0.02; done' >/dev/null 2>&1 </dev/null &")
    tick = Path(pw.pw_dir) / "tick"
    deadline = time.monotonic() + 5
    while not tick.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    backend.pause(h)
    frozen = tick.read_text()
    time.sleep(0.3)
    assert tick.read_text() == frozen
    backend.resume(h)
    time.sleep(0.3)
    assert tick.read_text() != frozen
    # stop: every process and the sandbox itself are gone, the account is locked
    init = backend.sandbox_pid(h)
    link = backend.link(h)
    assert init and (Path("/sys/class/net") / link.host_if).exists()
    ok(backend, h, "echo before > /tmp/t")
    backend.stop(h)
    assert backend.sandbox_pid(h) == 0 and not os.path.exists(f"/proc/{init}")
    assert not live(pw.pw_uid)
    assert not (Path("/sys/class/net") / link.host_if).exists()
    assert is_locked(h.host_identity) and backend.exists(h)
    # start: a new sandbox, fresh /tmp, same home and network slot
    backend.start(h)
    assert backend.sandbox_pid(h) not in (0, init)
    assert ok(backend, h, "test -e /tmp/t || echo absent").strip() == "absent"
    assert tick.exists() and backend.link(h) == link
    assert (Path("/sys/class/net") / link.host_if).exists()
    # destroy: nothing left
    state_file = backend.sandbox_dir / f"{wid}.json"
    assert state_file.exists()
    init = backend.sandbox_pid(h)
    backend.destroy(h)
    assert getpw(h.host_identity) is None and not backend.exists(h)
    assert not os.path.exists(f"/proc/{init}") and not live(pw.pw_uid)
    assert not (Path("/sys/class/net") / link.host_if).exists()
    assert not state_file.exists() and not (netshape.RESERVATIONS / str(link.index)).exists()
    assert wid not in backend.inventory().values()
    backend.destroy(h)  # idempotent


def test_sandbox_outlives_a_manager_restart_and_reclaim_removes_it(backend, tmp_path):
    wid = _wid()
    h = running(backend, wid)
    ok(backend, h, "echo kept > /tmp/kept; setsid sleep 555 >/dev/null 2>&1 </dev/null &")
    init, link = backend.sandbox_pid(h), backend.link(h)
    again = SandboxBackend(backend.settings)  # a new manager process over the same state
    assert again.sandbox_pid(h) == init
    assert again.inventory() == {h.host_identity: wid}
    assert ok(again, h, "cat /tmp/kept; ps -e -o args=").startswith("kept") and \
        "sleep 555" in ok(again, h, "ps -e -o args=")
    # a state file whose account is gone (a crash between userdel and the cleanup) is reclaimed too
    subprocess.run(["userdel", "--remove", "--force", h.host_identity], capture_output=True)
    assert again.inventory() == {h.host_identity: wid}
    again.reclaim(h.host_identity)
    assert again.inventory() == {}
    assert not os.path.exists(f"/proc/{init}")
    assert not (Path("/sys/class/net") / link.host_if).exists()
    assert not (netshape.RESERVATIONS / str(link.index)).exists()


def test_enforcement_and_counters(backend):
    h = backend.realise(_wid(), spec(bits=8_000_000))
    backend.start(h)
    e = backend.enforcement(h)
    assert e.network_bits_per_second == 8_000_000 and "bubblewrap" in e.mechanism and "tc" in e.mechanism
    link = backend.link(h)
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", link.host_if], capture_output=True, text=True).stdout
    assert "tbf" in qdiscs and "8Mbit" in qdiscs, qdiscs
    assert "tbf" in ok(backend, h, "/usr/sbin/tc qdisc show dev eth0")
    before = backend.sample(h)
    ok(backend, h, f"ping -c 3 -i 0.2 -s 1000 {link.host_addr} >/dev/null 2>&1 || "
                   f"python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                   f"[s.sendto(bytes(1000), (\"{link.host_addr}\", 9)) for _ in range(3)]'")
    after = backend.sample(h)
    assert after.net_tx >= before.net_tx + 3000


def _listen(addr: str):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, 0))
    srv.listen(1)
    srv.settimeout(30)
    return srv


@pytest.mark.parametrize("bits", [20_000_000])
def test_bandwidth_out_of_the_sandbox(backend, bits):
    h = backend.realise(_wid(), spec(bits=bits))
    backend.start(h)
    link = backend.link(h)
    srv = _listen(link.host_addr)
    port = srv.getsockname()[1]
    result = {}

    def receive():
        conn, _ = srv.accept()
        total, first, last = 0, None, None
        with conn:
            while chunk := conn.recv(1 << 20):
                now = time.perf_counter()
                first = first or now
                total += len(chunk)
                last = now
        result.update(total=total, seconds=(last - first) if first else 0.0)
    t = threading.Thread(target=receive, daemon=True)
    t.start()
    seconds = 5
    sender = ("import socket, time\n"
              f"s = socket.create_connection(('{link.host_addr}', {port}))\n"
              "buf = bytes(64 * 1024)\n"
              f"end = time.monotonic() + {seconds}\n"
              "while time.monotonic() < end:\n"
              "    s.sendall(buf)\n"
              "s.close()\n")
    try:
        p = backend.spawn(h, ExecOptions(["python3", "-c", sender]))
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        t.join(30)
    finally:
        srv.close()
    measured = result["total"] * 8 / result["seconds"]
    print(f"asked {bits / 1e6:.1f} Mbit/s, measured {measured / 1e6:.2f} Mbit/s over {result['seconds']:.2f} s")
    assert abs(measured - bits) <= 0.15 * bits, (measured, bits)


def test_unshaped_sandbox_has_no_tbf(backend):
    h = running(backend, _wid())
    link = backend.link(h)
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", link.host_if], capture_output=True, text=True).stdout
    assert "tbf" not in qdiscs
    assert backend.enforcement(h).network_bits_per_second == 0


def test_beside_dynamic_accounts_of_the_same_manager(backend):
    """The manager runs both plug-ins with one prefix and manager id: neither lists the other's."""
    from vws.manager.backends.account.dynamic import DynamicAccounts
    accounts = DynamicAccounts(backend.settings)
    try:
        box = running(backend, _wid())
        plain = accounts.realise(_wid(), model.WorkspaceSpec())
        assert backend.inventory() == {box.host_identity: box.workspace_id}
        assert accounts.inventory() == {plain.host_identity: plain.workspace_id}
        assert not accounts.exists(box) and not backend.exists(plain)
    finally:
        for hid in list(accounts.inventory()):
            accounts.reclaim(hid)


def test_bandwidth_into_the_sandbox(backend):
    bits = 20_000_000
    h = backend.realise(_wid(), spec(bits=bits))
    backend.start(h)
    link = backend.link(h)
    receiver = ("import socket, time\n"
                "s = socket.socket(); s.bind(('0.0.0.0', 5001)); s.listen(1); print('up', flush=True)\n"
                "c, _ = s.accept(); n = 0; first = last = None\n"
                "while (d := c.recv(1 << 20)):\n"
                "    last = time.perf_counter(); first = first or last; n += len(d)\n"
                "print(n * 8 / (last - first))\n")
    p = backend.spawn(h, ExecOptions(["python3", "-c", receiver]))
    try:
        assert p.stdout.readline() == b"up\n"
        s = socket.create_connection((link.inner_addr, 5001), timeout=30)
        end, buf = time.monotonic() + 5, bytes(64 * 1024)
        while time.monotonic() < end:
            s.sendall(buf)
        s.close()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    measured = float(out.decode().strip())
    print(f"into the sandbox: asked {bits / 1e6:.1f} Mbit/s, measured {measured / 1e6:.2f} Mbit/s")
    assert abs(measured - bits) <= 0.15 * bits, (measured, bits, err)


def test_reap_all_under_removes_what_a_stopped_manager_left(backend):
    h = running(backend, _wid())
    init, link = backend.sandbox_pid(h), backend.link(h)
    reap_all_under(backend.settings.state_dir.parent)
    deadline = time.monotonic() + 5
    while _alive(init) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(init)
    assert not (Path("/sys/class/net") / link.host_if).exists()
    assert not (netshape.RESERVATIONS / str(link.index)).exists()
