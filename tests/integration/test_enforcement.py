"""Limits enforced by the kernel on real account workspaces (cgroups of this host, loop-mounted
disk images): memory, CPU quota, disk, process count; read back by enforcement() and sample();
a spec the host cannot honour is refused before anything is made. Needs root."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.integration.stack import driven, driven_settings, new_wid
from vws.common import errors, model
from vws.manager.backends.account.dynamic import DynamicAccounts
from vws.manager.backends.base import ExecOptions
from vws.manager.backends.host.disk import mounts, release_all_under
from vws.manager.backends.account.pool import AccountPool

pytestmark = [pytest.mark.root,
              pytest.mark.requires(os.geteuid() != 0, "needs root: makes real accounts, cgroups and mounts")]

M = 1024 ** 2


@pytest.fixture(params=["dynamic-accounts", "account-pool"])
def backend(request, tmp_path):
    settings = driven_settings(request.param, "e", tmp_path / "state", quarantine_seconds=0.0,
                               disk_stock_bytes=64 * M, disk_stock=1)
    b = AccountPool(settings) if request.param == "account-pool" else DynamicAccounts(settings)
    with driven(b, (settings.account_prefix, settings.pool_prefix), lambda: release_all_under(tmp_path)):
        yield b


def limited(memory=0, cpu=0, disk=0, pids=0) -> model.WorkspaceSpec:
    return model.WorkspaceSpec(resources=model.Resources(memory_bytes=memory, cpu_millis=cpu, disk_bytes=disk,
                                                         max_processes=pids))


def sh(b, h, script: str, timeout: float = 30) -> tuple[int, str, str]:
    p = b.spawn(h, ExecOptions(["/bin/sh", "-c", script]))
    out, err = p.communicate(b"", timeout=timeout)
    return p.returncode, out.decode(), err.decode()


def test_memory_limit_kills_the_program_past_it_and_counts_the_oom(backend):
    h = backend.realise(new_wid(), limited(memory=64 * M, pids=64))
    backend.start(h)
    e = backend.enforcement(h)
    assert e.mechanism.startswith("cgroup v") and e.memory_limit_bytes == 64 * M and e.max_processes == 64
    assert e.cgroup == f"/vws/{backend.manager_id}/{h.workspace_id}"
    # below the limit: lives
    code, out, _ = sh(backend, h, "python3 -c 'b = bytearray(32 * 2**20); print(len(b))'")
    assert (code, out.strip()) == (0, str(32 * M))
    assert backend.sample(h).oom_kills == 0
    # past it: the kernel kills it
    code, _, _ = sh(backend, h, "exec python3 -c 'b = bytearray(128 * 2**20); print(len(b))'")
    assert code == -9
    c = backend.sample(h)
    assert c.oom_kills >= 1 and c.memory_limit == 64 * M
    backend.destroy(h)
    assert backend.enforcement(h) is None and backend.sample(h) is None


@pytest.mark.parametrize("backend", ["dynamic-accounts"], indirect=True)  # one 5 s measurement is enough
def test_cpu_quota_gives_half_a_core_to_500m(backend):
    h = backend.realise(new_wid(), limited(cpu=500))
    backend.start(h)
    e = backend.enforcement(h)
    assert (e.cpu_quota_micros, e.cpu_period_micros) == (50_000, 100_000)
    p = backend.spawn(h, ExecOptions(["/bin/sh", "-c", "while :; do :; done"]))
    try:
        time.sleep(0.3)
        a = backend.sample(h)
        time.sleep(5)
        b = backend.sample(h)
    finally:
        backend.stop(h)
        p.wait(timeout=10)
    share = (b.cpu_ns - a.cpu_ns) / 1e9 / (b.time - a.time)
    assert 0.45 <= share <= 0.55, share
    assert b.cpu_throttled_ns > a.cpu_throttled_ns


def test_disk_is_a_filesystem_of_its_own_full_at_its_size(backend, tmp_path):
    h = backend.realise(new_wid(), limited(disk=64 * M))
    backend.start(h)
    e = backend.enforcement(h)
    home = e.disk_mount
    assert e.disk_bytes >= 64 * M and home and os.path.ismount(home)
    st = os.stat(home)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid != 0
    assert Path(home, ".profile").exists() == Path("/etc/skel/.profile").exists()
    image = backend.disks.image(backend.disk_key(h))
    reserved = os.stat(image).st_blocks * 512
    assert reserved >= os.stat(image).st_size  # fallocated: every block really there, not sparse
    code, _, err = sh(backend, h, "dd if=/dev/zero of=$HOME/big bs=1M count=100 status=none; echo rc=$? >&2")
    assert "No space left on device" in err and "rc=1" in err
    assert backend.sample(h).disk_used >= 60 * M
    # the image's space was reserved at creation: filling it takes nothing more from outside
    # (the host filesystem's free space is not compared: other work on the machine moves it)
    assert os.stat(image).st_blocks * 512 == reserved
    assert image.exists()
    backend.destroy(h)
    if isinstance(backend, AccountPool):
        # a pool account keeps its filesystem across leases, emptied back to the skeleton
        assert image.exists() and home in [m[0] for m in mounts()]
        assert sorted(os.listdir(home)) == sorted(os.listdir("/etc/skel"))
    else:
        assert not image.exists()
        assert home not in [m[0] for m in mounts()]
    assert not backend.cgroups.exists(h.workspace_id)


def test_ready_image_is_taken_and_restocked(backend):
    h = backend.realise(new_wid(), limited(disk=64 * M))  # first of this size: formats on demand, starts the stock
    deadline = time.monotonic() + 10
    while backend.disks.ready() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.disks.ready() == 1
    t0 = time.perf_counter()
    h2 = backend.realise(new_wid(), limited(disk=64 * M)) if isinstance(backend, DynamicAccounts) else None
    took = time.perf_counter() - t0
    if h2 is not None:
        assert backend.enforcement(h2).disk_bytes >= 64 * M
        print(f"realise with a ready image: {took * 1000:.1f} ms; timings {backend.disks.timings}")
        backend.destroy(h2)
    backend.destroy(h)
    assert backend.disks.images() == ([h.host_identity] if isinstance(backend, AccountPool) else [])


def test_fork_bomb_stays_at_max_processes(backend):
    h = backend.realise(new_wid(), limited(pids=20))
    backend.start(h)
    code, out, err = sh(backend, h, "for i in $(seq 200); do sleep 30 >/dev/null 2>&1 </dev/null & done; echo done",
                        timeout=60)
    inside = backend.cgroups.pids(h.workspace_id)
    assert 10 <= len(inside) <= 20, (code, out, err)
    assert "fork" in err.lower() or "resource" in err.lower() or "retry" in err.lower(), err
    backend.stop(h)
    assert backend.cgroups.pids(h.workspace_id) == set()


def test_a_spec_the_host_cannot_honour_is_refused_before_anything_is_made(backend):
    cap = backend.capacity()
    for spec, field in ((limited(memory=cap.memory_bytes + 1), "memory_bytes"),
                        (limited(cpu=(os.cpu_count() or 1) * 1000 + 1), "cpu_millis"),
                        (limited(cpu=5), "cpu_millis"),
                        (limited(disk=1 << 60), "disk_bytes")):
        with pytest.raises(errors.ResourceExhausted) as e:
            backend.realise(new_wid(), spec)
        assert e.value.violations[0][0] == f"workspace.spec.resources.{field}"
    assert backend.inventory() == {}
    assert backend.disks.images() == []


def test_sweep_removes_images_no_workspace_owns(backend):
    h = backend.realise(new_wid(), limited(disk=32 * M))
    where = backend.disks.mount_point(backend.disk_key(h))
    assert where
    # an image whose workspace this backend does not know (a crash between making and recording)
    orphan = new_wid()
    elsewhere = backend.disks.dir.parent / "elsewhere"
    elsewhere.mkdir()
    backend.disks.make(orphan, 32 * M, elsewhere)  # mounted somewhere, owned by nobody
    try:
        assert backend.sweep_disks() == [orphan]
        assert backend.disks.images() == [backend.disk_key(h)]
        assert backend.disks.mount_point(orphan) is None
    finally:
        backend.disks.release(orphan)
    backend.destroy(h)
