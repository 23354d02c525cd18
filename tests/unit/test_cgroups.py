"""CgroupDriver against a fake cgroup tree (plain files in tmp_path) for v1 and v2."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from vws.common import errors
from vws.manager.backends.host.cgroups import CgroupDriver


def v1_root(tmp_path):
    (tmp_path / "freezer").mkdir()
    return tmp_path


def v2_root(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    return tmp_path


def test_detects_version(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert CgroupDriver(v1_root(tmp_path / "a"), "m1").version == 1
    assert CgroupDriver(v2_root(tmp_path / "b"), "m1").version == 2


def test_v1_without_freezer_is_a_clear_error(tmp_path):
    with pytest.raises(errors.FailedPrecondition, match="freezer"):
        CgroupDriver(tmp_path, "m1")


def test_layout_v1_and_v2(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    d1 = CgroupDriver(v1_root(tmp_path / "one"), "m1")
    d2 = CgroupDriver(v2_root(tmp_path / "two"), "m1")
    assert d1.paths("w1") == [tmp_path / "one/freezer/vws/m1/w1"]
    assert d2.paths("w1") == [tmp_path / "two/vws/m1/w1"]
    assert d2.procs_files("w1") == [tmp_path / "two/vws/m1/w1/cgroup.procs"]
    for d in (d1, d2):
        d.create("w1")
        d.create("w1")  # idempotent
        assert d.exists("w1")
        d.add("w1", 4242)
        assert d.pids("w1") == {4242}
        assert d.pids("nope") == set()


def test_v1_freeze_and_thaw(tmp_path):
    d = CgroupDriver(v1_root(tmp_path), "m1", timeout=0.5)
    d.create("w1")
    d.freeze("w1")
    assert (d.paths("w1")[0] / "freezer.state").read_text() == "FROZEN"
    assert d.is_frozen("w1")
    d.thaw("w1")
    assert (d.paths("w1")[0] / "freezer.state").read_text() == "THAWED"
    assert not d.is_frozen("w1")


def test_v1_freeze_waits_while_freezing(tmp_path, monkeypatch):
    d = CgroupDriver(v1_root(tmp_path), "m1", timeout=1.0)
    d.create("w1")
    answers = iter(["FREEZING", "FREEZING", "FROZEN"])
    real_read = d._read
    monkeypatch.setattr(d, "_read", lambda p: next(answers) if p.name == "freezer.state" else real_read(p))
    d.freeze("w1")  # returns only once FROZEN is read


def test_v1_freeze_writes_frozen_again_while_freezing(tmp_path, monkeypatch):
    """As the v1 kernel does when a task forks during a freeze: FREEZING until FROZEN is written
    once more."""
    d = CgroupDriver(v1_root(tmp_path), "m1", timeout=2.0)
    d.create("w1")
    writes = []
    real_read, real_write = d._read, d._write
    monkeypatch.setattr(d, "_write", lambda p, text: (writes.append(text), real_write(p, text)))
    monkeypatch.setattr(d, "_read", lambda p: ("FROZEN" if writes.count("FROZEN") >= 2 else "FREEZING")
                        if p.name == "freezer.state" else real_read(p))
    d.freeze("w1")
    assert writes == ["FROZEN", "FROZEN"]


def test_v1_freeze_times_out_and_thaws(tmp_path, monkeypatch):
    d = CgroupDriver(v1_root(tmp_path), "m1", timeout=0.05)
    d.create("w1")
    real_read = d._read
    monkeypatch.setattr(d, "_read", lambda p: "FREEZING" if p.name == "freezer.state" else real_read(p))
    with pytest.raises(errors.BackendError, match="freeze"):
        d.freeze("w1")
    assert (d.paths("w1")[0] / "freezer.state").read_text() == "THAWED"


def test_v2_freeze_waits_for_events(tmp_path):
    d = CgroupDriver(v2_root(tmp_path), "m1", timeout=2.0)
    d.create("w1")
    cg = d.paths("w1")[0]
    (cg / "cgroup.events").write_text("populated 1\nfrozen 0\n")

    def kernel():
        time.sleep(0.05)
        assert (cg / "cgroup.freeze").read_text() == "1"
        (cg / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    t = threading.Thread(target=kernel)
    t.start()
    started = time.monotonic()
    d.freeze("w1")
    t.join()
    assert time.monotonic() - started >= 0.04
    assert d.is_frozen("w1")
    d.thaw("w1")
    assert (cg / "cgroup.freeze").read_text() == "0"


def test_v2_freeze_timeout(tmp_path):
    d = CgroupDriver(v2_root(tmp_path), "m1", timeout=0.05)
    d.create("w1")
    (d.paths("w1")[0] / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with pytest.raises(errors.BackendError):
        d.freeze("w1")
    assert (d.paths("w1")[0] / "cgroup.freeze").read_text() == "0"


@pytest.mark.parametrize("make_root", [v1_root, v2_root])
def test_kill_all_kills_listed_processes(tmp_path, make_root):
    d = CgroupDriver(make_root(tmp_path), "m1", timeout=3.0)
    d.create("w1")
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    reaper = threading.Thread(target=lambda: [p.wait() for p in procs])
    reaper.start()  # reaps them so they stop being zombies, as their real parent would
    try:
        for p in procs:
            d.add("w1", p.pid)
        # a fake file only holds the last write: list them all
        (d.procs_files("w1")[0]).write_text("".join(f"{p.pid}\n" for p in procs))
        d.kill_all("w1")
        reaper.join(timeout=3)
        assert [p.returncode for p in procs] == [-9, -9, -9]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_kill_all_and_remove_are_idempotent(tmp_path):
    d = CgroupDriver(v1_root(tmp_path), "m1", timeout=0.5)
    d.kill_all("never-made")
    d.remove("never-made")
    d.create("w1")
    d.freeze("w1")
    d.remove("w1")
    assert not d.paths("w1")[0].exists()
    d.remove("w1")


def full_v1_root(tmp_path):
    for c in ("freezer", "memory", "cpu", "cpuacct", "pids"):
        (tmp_path / c).mkdir()
    return tmp_path


def test_v1_limits_are_written_per_controller_and_read_back(tmp_path):
    d = CgroupDriver(full_v1_root(tmp_path), "m1")
    d.create("w1")
    assert {p.parent.parent.parent.name for p in d.paths("w1")} == {"freezer", "memory", "cpu", "cpuacct", "pids"}
    mem = tmp_path / "memory/vws/m1/w1"
    (mem / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    d.set_limits("w1", memory_bytes=64 << 20, cpu_millis=500, max_processes=100)
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)  # no swap past it
    assert (tmp_path / "cpu/vws/m1/w1/cpu.cfs_period_us").read_text() == "100000"
    assert (tmp_path / "cpu/vws/m1/w1/cpu.cfs_quota_us").read_text() == "50000"
    assert (tmp_path / "pids/vws/m1/w1/pids.max").read_text() == "100"
    lim = d.limits("w1")
    assert (lim.memory_bytes, lim.cpu_quota_us, lim.cpu_period_us, lim.max_processes) == (64 << 20, 50000, 100000, 100)
    # joining writes the pid into every controller's group
    d.add("w1", 4242)
    assert all(f.read_text() == "4242" for f in d.procs_files("w1")) and len(d.procs_files("w1")) == 5


def test_v1_counters(tmp_path):
    d = CgroupDriver(full_v1_root(tmp_path), "m1")
    d.create("w1")
    (tmp_path / "cpuacct/vws/m1/w1/cpuacct.usage").write_text("1500000000\n")
    (tmp_path / "cpu/vws/m1/w1/cpu.stat").write_text("nr_periods 10\nnr_throttled 4\nthrottled_time 700000\n")
    mem = tmp_path / "memory/vws/m1/w1"
    (mem / "memory.usage_in_bytes").write_text("12345\n")
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    c = d.counters("w1")
    assert (c.cpu_ns, c.cpu_throttled_ns, c.memory_current, c.memory_limit, c.oom_kills) == \
        (1500000000, 700000, 12345, 0, 3)
    assert d.counters("nope") is None and d.limits("nope") is None


def test_v1_co_mounted_cpu_cpuacct_is_one_group(tmp_path):
    (tmp_path / "freezer").mkdir()
    (tmp_path / "cpu,cpuacct").mkdir()
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")
    (tmp_path / "cpuacct").symlink_to("cpu,cpuacct")
    d = CgroupDriver(tmp_path, "m1")
    assert len(d.paths("w1")) == 2
    assert d.missing(["memory", "cpu", "pids"]) == ["memory", "pids"]


def test_limit_without_its_controller_is_refused(tmp_path):
    d = CgroupDriver(v1_root(tmp_path), "m1")  # freezer only
    d.create("w1")
    with pytest.raises(errors.ResourceExhausted) as e:
        d.set_limits("w1", memory_bytes=1 << 20)
    assert e.value.violations[0][0] == "workspace.spec.resources.memory_bytes"
    d.set_limits("w1")  # no limit asked: nothing needed


def test_v2_limits_enable_controllers_and_are_read_back(tmp_path):
    d = CgroupDriver(v2_root(tmp_path), "m1")
    d.create("w1")
    for level in (tmp_path, tmp_path / "vws", tmp_path / "vws/m1"):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    cg = tmp_path / "vws/m1/w1"
    d.set_limits("w1", memory_bytes=64 << 20, cpu_millis=1500, max_processes=512)
    assert (cg / "memory.max").read_text() == str(64 << 20)
    assert (cg / "memory.swap.max").read_text() == "0"
    assert (cg / "cpu.max").read_text() == "150000 100000"
    assert (cg / "pids.max").read_text() == "512"
    lim = d.limits("w1")
    assert (lim.memory_bytes, lim.cpu_quota_us, lim.cpu_period_us, lim.max_processes) == (64 << 20, 150000, 100000, 512)
    (cg / "cpu.max").write_text("max 100000\n")
    (cg / "pids.max").write_text("max\n")
    assert (d.limits("w1").cpu_quota_us, d.limits("w1").max_processes) == (0, 0)
    assert d.group("w1") == "/vws/m1/w1"


def test_v2_counters(tmp_path):
    d = CgroupDriver(v2_root(tmp_path), "m1")
    d.create("w1")
    cg = tmp_path / "vws/m1/w1"
    (cg / "cpu.stat").write_text("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 3\n"
                                 "nr_throttled 1\nthrottled_usec 40\n")
    (cg / "memory.current").write_text("4096\n")
    (cg / "memory.max").write_text("67108864\n")
    (cg / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n")
    c = d.counters("w1")
    assert (c.cpu_ns, c.cpu_throttled_ns, c.memory_current, c.memory_limit, c.oom_kills) == \
        (2_500_000, 40_000, 4096, 64 << 20, 2)


def test_v2_without_a_controller(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu pids\n")
    d = CgroupDriver(tmp_path, "m1")
    assert d.missing(["memory", "cpu"]) == ["memory"]
    d.create("w1")
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +pids"
