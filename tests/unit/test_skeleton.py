"""A home filled from the skeleton: what the host refuses is the domain error it is, naming the
entry and who must fix it, never an OSError (INTERNAL) (issue 17, item 4)."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vws.common import errors
from vws.manager.backends.host import skeleton

UID, GID = os.getuid(), os.getgid()


@pytest.fixture
def skel(tmp_path) -> Path:
    d = tmp_path / "skel"
    (d / "bin").mkdir(parents=True)
    (d / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    os.chmod(d / "bin" / "hello", 0o750)
    (d / ".profile").write_text("# profile\n")
    os.symlink("bin/hello", d / "link")
    return d


def test_a_skeleton_is_copied_with_modes_and_links(tmp_path, skel):
    home = tmp_path / "home"
    skeleton.make_home(home, skel, UID, GID)
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    assert (home / "bin" / "hello").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(os.stat(home / "bin" / "hello").st_mode) == 0o750
    assert os.readlink(home / "link") == "bin/hello"
    assert (home / ".profile").exists()


def test_a_pipe_in_the_skeleton_is_the_operators_to_fix_and_no_home_is_left(tmp_path, skel):
    os.mkfifo(skel / "bin" / "fifo")
    home = tmp_path / "home"
    with pytest.raises(errors.FailedPrecondition) as e:
        skeleton.make_home(home, skel, UID, GID)
    assert f"{skel}/bin/fifo" in e.value.message and "skeleton directory" in e.value.message
    assert not home.exists()


def test_a_skeleton_entry_clashing_with_the_home_names_both(tmp_path, skel):
    home = tmp_path / "home"
    home.mkdir()
    (home / "bin").write_text("a file where the skeleton has a directory")
    with pytest.raises(errors.FailedPrecondition) as e:
        skeleton.fill(home, skel, UID, GID)
    assert f"{skel}/bin" in e.value.message and str(home) in e.value.message
    (home / "bin").unlink()
    (home / ".profile").mkdir()  # a directory where the skeleton has a file
    with pytest.raises(errors.FailedPrecondition) as e:
        skeleton.fill(home, skel, UID, GID)
    assert f"{skel}/.profile" in e.value.message


def test_a_symlink_in_the_home_is_replaced_not_written_through(tmp_path, skel):
    home, outside = tmp_path / "home", tmp_path / "outside"
    outside.write_text("untouched")
    home.mkdir()
    os.symlink(outside, home / ".profile")
    skeleton.fill(home, skel, UID, GID)
    assert outside.read_text() == "untouched" and (home / ".profile").read_text() == "# profile\n"


def test_a_home_that_cannot_be_made_names_its_place(tmp_path, skel):
    (tmp_path / "home").write_text("something in the way")
    with pytest.raises(errors.FailedPrecondition) as e:
        skeleton.make_home(tmp_path / "home", skel, UID, GID)
    assert f"{tmp_path}/home" in e.value.message and "make room" in e.value.message
    assert (tmp_path / "home").read_text() == "something in the way"


def test_a_full_disk_is_resource_exhausted():
    full = OSError(28, os.strerror(28))
    host = skeleton.home_error(full, Path("/home/x"), Path("/etc/skel"), "big")
    assert isinstance(host, errors.ResourceExhausted) and "host's disk holding /home/x" in host.message
    own = skeleton.home_error(full, Path("/home/x"), Path("/etc/skel"), "big", "workspace.spec.resources.disk_bytes")
    assert isinstance(own, errors.ResourceExhausted) and own.violations[0][0] == "workspace.spec.resources.disk_bytes"
    assert isinstance(skeleton.home_error(OSError(122, "quota"), Path("/h"), Path("/s")), errors.ResourceExhausted)
