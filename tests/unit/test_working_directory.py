"""An Exec's working directory stays inside the workspace: below the account's home (no '..'
past it, no symlink out of it, no absolute path elsewhere), and no '..' in a guest's."""
from __future__ import annotations

import os

import pytest

from vws.common import errors
from vws.manager.backends.account.programs import open_working_directory
from vws.manager.backends.base import ExecOptions, HostHandle
from vws.manager.backends.vm.backend import LibvirtBackend


@pytest.fixture
def home(tmp_path):
    (tmp_path / "home" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "home" / "out").symlink_to(tmp_path)
    (tmp_path / "home" / "in").symlink_to("sub/deeper")
    (tmp_path / "home" / "file").write_text("")
    return str(tmp_path / "home")


def where(home: str, wanted: str) -> str:
    fd = open_working_directory(home, wanted)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.mark.parametrize("wanted", ["../../root", "..", "sub/../..", "out", "out/.", "/root", "/", "HOME/..",
                                    "HOME/../home"])
def test_anything_outside_the_home_is_refused(home, wanted):
    with pytest.raises(errors.InvalidArgument) as e:
        open_working_directory(home, wanted.replace("HOME", home))
    assert e.value.violations[0][0] == "working_directory"
    assert home not in e.value.message.replace(wanted.replace("HOME", home), "")  # no host path of ours


@pytest.mark.parametrize("wanted,inside", [("", ""), (".", ""), ("sub", "/sub"), ("sub/deeper/..", "/sub"),
                                           ("in", "/sub/deeper"), ("HOME/sub", "/sub"), ("HOME", "")])
def test_directories_inside_the_home_are_resolved(home, wanted, inside):
    assert where(home, wanted.replace("HOME", home)) == home + inside


@pytest.mark.parametrize("wanted", ["missing", "file", "sub/missing"])
def test_what_is_not_a_directory_is_refused(home, wanted):
    with pytest.raises(errors.InvalidArgument, match="not a directory"):
        open_working_directory(home, wanted)


@pytest.mark.parametrize("wanted", ["../../root", "/home/../root", "a/.."])
def test_a_guest_working_directory_climbing_with_dotdot_is_refused(wanted):
    # Refused before the guest is reached: the backend's state is never read.
    with pytest.raises(errors.InvalidArgument) as e:
        LibvirtBackend.spawn(object(), HostHandle("w1", "dom"), ExecOptions(["pwd"], {}, wanted))
    assert e.value.violations[0][0] == "working_directory"
