"""The UNIX_ACCOUNT backends against the real host: real accounts, real cgroups. Needs root
(CI runs as root); every account the tests make is removed, even when a test fails."""
from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.stack import driven, driven_settings, new_wid
from vws.common import errors, model
from vws.manager.backends.account import make_backend
from vws.manager.backends.account.dynamic import DynamicAccounts
from vws.manager.backends.account.leftovers import uid_pids
from vws.manager.backends.account.users import getpw, is_locked, supplementary_groups
from vws.manager.backends.base import ExecOptions, HostHandle, SetupFailed
from vws.manager.backends.account.pool import AccountPool

pytestmark = [pytest.mark.root,
              pytest.mark.requires(os.geteuid() != 0, "needs root: makes real Unix accounts")]


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


@pytest.fixture(params=["dynamic-accounts", "account-pool"])
def backend(request, tmp_path):
    settings = driven_settings(request.param, "t", tmp_path / "state", quarantine_seconds=60.0)
    if request.param == "account-pool":
        clock = Clock()
        b = AccountPool(settings, clock=clock)
        b.test_clock = clock
    else:
        b = make_backend(settings)
    with driven(b, (settings.account_prefix, settings.pool_prefix)):
        yield b


def spec(setup: str = "", files=(), env=None) -> model.WorkspaceSpec:
    return model.WorkspaceSpec(software=model.Software(environment=env or {}, setup_script=setup, files=list(files)))


def run(b, h, argv, env=None, cwd="", stdin=b"") -> tuple[int, str, str]:
    p = b.spawn(h, ExecOptions(argv, env or {}, cwd))
    out, err = p.communicate(stdin, timeout=10)
    return p.returncode, out.decode(), err.decode()


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_realise_stages_locked_account_and_runs_setup_as_it(backend):
    wid = new_wid()
    h = backend.realise(wid, spec(setup="id -un > who.txt\necho \"$GREETING\" > greeting.txt\n",
                                  files=[model.StagedFile("bin/run.sh", b"#!/bin/sh\necho run\n", 0o750),
                                         model.StagedFile("notes.txt", b"hello", 0o600)],
                                  env={"GREETING": "hi there"}))
    assert h.workspace_id == wid and backend.exists(h)
    assert backend.inventory()[h.host_identity] == wid
    pw = pwd.getpwnam(h.host_identity)
    assert is_locked(h.host_identity)
    r = subprocess.run(["passwd", "-S", h.host_identity], capture_output=True, text=True)
    assert r.returncode == 0
    home = Path(pw.pw_dir)
    st = os.stat(home / "bin/run.sh")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, pw.pw_uid, pw.pw_gid)
    assert os.stat(home / "bin").st_uid == pw.pw_uid
    assert os.stat(home / "notes.txt").st_mode & 0o777 == 0o600
    assert (home / "notes.txt").read_bytes() == b"hello"
    assert (home / "who.txt").read_text().strip() == h.host_identity
    assert os.stat(home / "who.txt").st_uid == pw.pw_uid
    assert (home / "greeting.txt").read_text().strip() == "hi there"
    assert "GREETING='hi there'" in (home / ".vws/environment.sh").read_text()
    assert not list(home.glob(".vws-setup-*"))
    # idempotent on the workspace id
    assert backend.realise(wid, spec()) == h


def test_staged_file_outside_home_is_refused(backend):
    with pytest.raises(errors.InvalidArgument) as e:
        backend.realise(new_wid(), spec(files=[model.StagedFile("../etc/evil", b"x")]))
    assert e.value.violations[0][0] == "workspace.spec.software.files[0].path"
    assert backend.inventory() == {}


def test_failing_setup_undoes_everything(backend):
    wid = new_wid()
    with pytest.raises(SetupFailed) as e:
        backend.realise(wid, spec(setup="echo working; touch /tmp/vws-test-$(id -u); sleep 100 &\necho 'it broke' >&2; exit 3"))
    assert "status 3" in e.value.message and "it broke" in e.value.message
    assert e.value.violations[0][0] == "workspace.spec.software.setup_script"
    assert backend.inventory() == {}
    if isinstance(backend, DynamicAccounts):
        assert getpw(backend.account_name(wid)) is None
    else:
        for name in backend.accounts:
            assert backend.state_of(name)[1] in ("free", "quarantined")
    assert not backend.cgroups.exists(wid)


def test_start_exec_env_cwd(backend):
    h = backend.realise(new_wid(), spec(files=[model.StagedFile("sub/dir/f", b"")]))
    backend.start(h)
    assert not is_locked(h.host_identity)
    pw = pwd.getpwnam(h.host_identity)
    code, out, _ = run(backend, h, ["id", "-u"])
    assert (code, out.strip()) == (0, str(pw.pw_uid))
    code, out, _ = run(backend, h, ["sh", "-c", "pwd; echo $HOME $USER $LOGNAME $SHELL; echo \"$FOO\"; echo $PATH"],
                       env={"FOO": "a b;c"})
    lines = out.splitlines()
    assert lines[0] == pw.pw_dir
    assert lines[1] == f"{pw.pw_dir} {pw.pw_name} {pw.pw_name} /bin/bash"
    assert lines[2] == "a b;c"
    assert "/usr/bin" in lines[3]
    code, out, _ = run(backend, h, ["pwd"], cwd="sub/dir")
    assert out.strip() == f"{pw.pw_dir}/sub/dir"
    code, out, _ = run(backend, h, ["cat"], stdin=b"piped")
    assert out == "piped"
    code, out, _ = run(backend, h, ["sh", "-c", "cat /proc/self/cgroup"])
    assert f"/vws/{backend.manager_id}/{h.workspace_id}" in out
    code, out, _ = run(backend, h, ["sh", "-c", "exit 7"])
    assert code == 7
    with pytest.raises(errors.InvalidArgument) as e:
        backend.spawn(h, ExecOptions(["no-such-program-vws"], {}, ""))
    assert e.value.violations[0][0] == "argv"
    with pytest.raises(errors.InvalidArgument) as e:
        backend.spawn(h, ExecOptions(["true"], {}, "missing-dir"))
    assert e.value.violations[0][0] == "working_directory"
    # the user's variables never reach a root process
    code, out, _ = run(backend, h, ["sh", "-c", "echo ok"], env={"LD_PRELOAD": "/nonexistent.so"})
    assert "ok" in out


def test_working_directory_stays_inside_the_home(backend):
    h = backend.realise(new_wid(), spec(files=[model.StagedFile("sub/f", b"")]))
    backend.start(h)
    home = pwd.getpwnam(h.host_identity).pw_dir
    assert run(backend, h, ["ln", "-s", "/root", "out"])[0] == 0
    assert run(backend, h, ["ln", "-s", "sub", "in"])[0] == 0
    for outside in ("../../root", "/root", "sub/../../..", "out", "out/.", f"{home}/../.."):
        with pytest.raises(errors.InvalidArgument) as e:
            backend.spawn(h, ExecOptions(["pwd"], {}, outside))
        assert e.value.violations[0][0] == "working_directory", outside
    for inside, where in (("sub", "sub"), ("in", "sub"), (f"{home}/sub", "sub"), ("sub/..", ""), (home, "")):
        code, out, _ = run(backend, h, ["pwd"], cwd=inside)
        assert (code, out.strip()) == (0, f"{home}/{where}".rstrip("/")), inside


def test_pause_resume_freezes_processes(backend):
    h = backend.realise(new_wid(), spec())
    backend.start(h)
    p = backend.spawn(h, ExecOptions(["sh", "-c", "while :; do echo x >> count; sleep 0.01; done"], {}, ""))
    try:
        count = Path(pwd.getpwnam(h.host_identity).pw_dir) / "count"
        deadline = time.monotonic() + 5
        while not count.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        backend.pause(h)
        assert backend.cgroups.is_frozen(h.workspace_id)
        size = count.stat().st_size
        time.sleep(0.2)
        assert count.stat().st_size == size
        backend.resume(h)
        time.sleep(0.2)
        assert count.stat().st_size > size
    finally:
        backend.stop(h)
        p.wait(timeout=5)


def test_stop_kills_everything_and_locks(backend):
    h = backend.realise(new_wid(), spec())
    backend.start(h)
    pw = pwd.getpwnam(h.host_identity)
    p = backend.spawn(h, ExecOptions(["sh", "-c", "sleep 100 & sleep 100 & wait"], {}, ""))
    # one the account started outside vws (as a login would): not in the workspace's cgroup
    outside = subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                                "sleep", "100"])
    try:
        deadline = time.monotonic() + 5
        # until the outside one runs as the account too (setpriv has switched), not just any 4
        while ((outside.pid not in uid_pids(pw.pw_uid) or len(uid_pids(pw.pw_uid)) < 4)
               and time.monotonic() < deadline):
            time.sleep(0.01)
        backend.stop(h)
        assert p.wait(timeout=5) == -9
        assert outside.wait(timeout=5) == -9
        assert [q for q in uid_pids(pw.pw_uid) if not gone(q)] == []
        assert is_locked(h.host_identity)
        backend.start(h)  # and it starts again
        assert run(backend, h, ["true"])[0] == 0
    finally:
        for q in (p, outside):
            if q.poll() is None:
                q.kill()


def test_the_policys_unix_group_is_the_accounts_until_it_is_returned(backend, unix_group):
    h = backend.realise(new_wid(), model.WorkspaceSpec(software=model.Software(unix_group=unix_group)))
    assert supplementary_groups(h.host_identity) == [unix_group]
    backend.start(h)
    code, out, err = run(backend, h, ["id", "-nG"])
    assert code == 0 and unix_group in out.split(), err
    backend.destroy(h)
    assert supplementary_groups(h.host_identity) == []  # deleted, or a pool account back without it


def test_a_unix_group_the_host_lacks_is_refused_before_anything_is_made(backend):
    before = backend.inventory()
    with pytest.raises(errors.FailedPrecondition, match="groupadd vws-no-such-group"):
        backend.realise(new_wid(), model.WorkspaceSpec(software=model.Software(unix_group="vws-no-such-group")))
    assert backend.inventory() == before


def test_destroy_removes_every_trace(backend):
    h = backend.realise(new_wid(), spec(files=[model.StagedFile("mine.txt", b"x")]))
    backend.start(h)
    pw = pwd.getpwnam(h.host_identity)
    code, out, err = run(backend, h, ["sh", "-c", "echo '0 0 * * * true' | crontab - && "
                                      "mkdir -p /tmp/vwt-dir-$USER && touch /tmp/vwt-dir-$USER/f /tmp/vwt-$USER "
                                      "/var/tmp/vwt-$USER /dev/shm/vwt-$USER"])
    assert code == 0, err
    assert Path(f"/var/spool/cron/crontabs/{pw.pw_name}").exists()
    p = backend.spawn(h, ExecOptions(["sleep", "100"], {}, ""))
    backend.destroy(h)
    assert p.wait(timeout=5) == -9
    assert [q for q in uid_pids(pw.pw_uid) if not gone(q)] == []
    assert not Path(f"/var/spool/cron/crontabs/{pw.pw_name}").exists()
    for top in ("/tmp", "/var/tmp", "/dev/shm"):
        assert [e.name for e in os.scandir(top) if e.stat(follow_symlinks=False).st_uid == pw.pw_uid] == []
    assert not backend.cgroups.exists(h.workspace_id)
    assert not backend.exists(h) and backend.inventory() == {}
    if isinstance(backend, DynamicAccounts):
        assert getpw(h.host_identity) is None and not Path(pw.pw_dir).exists()
    else:
        assert getpw(h.host_identity) is not None and is_locked(h.host_identity)
        home = Path(pw.pw_dir)
        assert sorted(x.name for x in home.iterdir()) == sorted(x.name for x in Path("/etc/skel").iterdir())
        assert all(x.stat().st_uid == pw.pw_uid for x in home.iterdir())
        state = backend.state_of(h.host_identity)
        assert state[1] == "quarantined" and state[2] > backend.test_clock.now
    backend.destroy(h)  # idempotent
    backend.destroy(h)


def test_orphan_is_found_and_reclaimed_by_a_new_instance(backend):
    wid = new_wid()
    h = backend.realise(wid, spec())
    backend.start(h)
    p = backend.spawn(h, ExecOptions(["sh", "-c", "echo started; exec sleep 100"], {}, ""))
    assert p.stdout.readline() == b"started\n"
    # the manager restarts with no record of the workspace
    backend.close()
    again = type(backend)(backend.settings)
    try:
        assert again.inventory() == {h.host_identity: wid}
        again.reclaim(h.host_identity)
        assert p.wait(timeout=5) == -9
        assert again.inventory() == {}
        assert not again.exists(h)
        again.reclaim(h.host_identity)  # nothing left: no error
    finally:
        again.close()
        if isinstance(backend, AccountPool):
            backend.__init__(backend.settings, clock=backend.test_clock)  # reopen for the fixture's clean-up


@pytest.mark.parametrize("backend", ["account-pool"], indirect=True)
def test_pool_exhaustion_and_quarantine(backend):
    h1 = backend.realise(new_wid(), spec())
    backend.realise(new_wid(), spec())
    with pytest.raises(errors.ResourceExhausted, match="no free pool account"):
        backend.realise(new_wid(), spec())
    backend.destroy(h1)
    with pytest.raises(errors.ResourceExhausted, match="resting"):
        backend.realise(new_wid(), spec())
    backend.test_clock.now += 61
    backend.maintain()
    assert backend.state_of(h1.host_identity)[1] == "free"
    h3 = backend.realise(new_wid(), spec())
    assert h3.host_identity == h1.host_identity
    assert backend.capacity().workspaces == 2


@pytest.mark.parametrize("backend", ["account-pool"], indirect=True)
def test_pool_recreates_missing_accounts(backend):
    name = backend.accounts[1]
    subprocess.run(["userdel", "--remove", name], check=True, capture_output=True)
    backend.maintain()
    assert getpw(name) is not None and is_locked(name)


def test_other_accounts_are_never_touched(backend):
    with pytest.raises(errors.FailedPrecondition):
        backend.destroy(HostHandle("wnotmine0000", "root")) if isinstance(backend, DynamicAccounts) \
            else backend.start(HostHandle("wnotmine0000", "root"))
    if isinstance(backend, DynamicAccounts):
        with pytest.raises(errors.FailedPrecondition):
            backend.reclaim("root")
    else:
        backend.reclaim("root")  # not leased: nothing to do
    assert getpw("root") is not None
