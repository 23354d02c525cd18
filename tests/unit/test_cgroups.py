"""CgroupDriver against a fake cgroup tree (plain files in tmp_path) for v1 and v2."""
from __future__ import annotations

import subprocess
import threading
import time

import pytest

from vws.common import errors
from vws.manager.backends.cgroups import CgroupDriver


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
