"""Making an account's home from the skeleton on the real host: a full disk is RESOURCE_EXHAUSTED,
a skeleton the host cannot copy is FAILED_PRECONDITION for the site's operator, and the create
leaves nothing (issue 17, item 4). useradd --skel cut files short on a full disk and exited 0;
its failures and copytree's came back as INTERNAL, and a failed useradd kept the account."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.stack import driven, driven_settings, new_wid, remove_accounts
from vws.common import errors, model
from vws.manager.backends.account.dynamic import DynamicAccounts
from vws.manager.backends.account.pool import AccountPool
from vws.manager.backends.account.users import getpw

pytestmark = [pytest.mark.root,
              pytest.mark.requires(os.geteuid() != 0, "needs root: makes real Unix accounts and mounts")]
MiB = 1024 ** 2


@pytest.fixture
def tiny_base(tmp_path):
    """A home base of 1 MiB (tmpfs), unmounted afterwards."""
    base = tmp_path / "homes"
    base.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M,mode=755", "vws-test-homes", str(base)], check=True)
    yield base
    subprocess.run(["umount", "--lazy", str(base)], capture_output=True)


@pytest.fixture
def skel(tmp_path) -> Path:
    d = tmp_path / "skel"
    (d / "bin").mkdir(parents=True)
    (d / ".profile").write_text("# profile\n")
    return d


def settings(tmp_path, kind, skel, home_base=None):
    return driven_settings(kind, "h", tmp_path / "state", skeleton_dir=skel, home_base=home_base)


def test_a_full_home_disk_is_resource_exhausted_and_leaves_no_account(tmp_path, tiny_base, skel):
    (skel / "big").write_bytes(b"x" * (2 * MiB))
    s = settings(tmp_path, "dynamic-accounts", skel, tiny_base)
    with driven(DynamicAccounts(s), (s.account_prefix,)) as b:
        wid = new_wid()
        with pytest.raises(errors.ResourceExhausted) as e:
            b.realise(wid, model.WorkspaceSpec())
        assert "host's disk holding" in e.value.message and str(tiny_base) in e.value.message
        assert getpw(b.account_name(wid)) is None and b.inventory() == {}
        assert os.listdir(tiny_base) == []  # the home cut short went with the account
        (skel / "big").unlink()
        h = b.realise(new_wid(), model.WorkspaceSpec())  # with room, the same settings work
        assert (Path(getpw(h.host_identity).pw_dir) / ".profile").read_text() == "# profile\n"


def test_a_skeleton_holding_a_pipe_is_the_operators_to_fix(tmp_path, skel):
    os.mkfifo(skel / "bin" / "pipe")
    s = settings(tmp_path, "dynamic-accounts", skel, tmp_path / "homes")
    (tmp_path / "homes").mkdir()
    with driven(DynamicAccounts(s), (s.account_prefix,)) as b:
        wid = new_wid()
        with pytest.raises(errors.FailedPrecondition) as e:
            b.realise(wid, model.WorkspaceSpec())
        assert f"{skel}/bin/pipe" in e.value.message and "skeleton directory" in e.value.message
        assert getpw(b.account_name(wid)) is None and os.listdir(tmp_path / "homes") == []


def test_a_pool_on_a_full_disk_says_so_and_makes_no_account(tmp_path, tiny_base, skel):
    (skel / "big").write_bytes(b"x" * (2 * MiB))
    s = settings(tmp_path, "account-pool", skel, tiny_base)
    try:
        with pytest.raises(errors.ResourceExhausted):
            AccountPool(s)
        assert getpw(f"{s.pool_prefix}000") is None and os.listdir(tiny_base) == []
    finally:
        remove_accounts(s.pool_prefix)


def test_a_skeleton_larger_than_the_workspaces_disk_names_disk_bytes(tmp_path, skel):
    (skel / "big").write_bytes(b"x" * (24 * MiB))  # a disk of 1 MiB offers a few MiB
    s = settings(tmp_path, "account-pool", skel)
    with driven(AccountPool(s), (s.pool_prefix,)) as b:
        spec = model.WorkspaceSpec(resources=model.Resources(disk_bytes=1 * MiB))
        with pytest.raises(errors.ResourceExhausted) as e:
            b.realise(new_wid(), spec)
        assert e.value.violations[0][0] == "workspace.spec.resources.disk_bytes"
        assert b.inventory() == {} and b.disks.images() == []


def staging(path: str, size: int) -> model.WorkspaceSpec:
    return model.WorkspaceSpec(software=model.Software(files=[model.StagedFile("x", b""),
                                                              model.StagedFile(path, b"x" * size, 0o644)]))


def test_staged_files_past_the_hosts_disk_are_resource_exhausted(tmp_path, tiny_base, skel):
    """os.write's ENOSPC came back as INTERNAL."""
    s = settings(tmp_path, "dynamic-accounts", skel, tiny_base)
    with driven(DynamicAccounts(s), (s.account_prefix,)) as b:
        wid = new_wid()
        with pytest.raises(errors.ResourceExhausted) as e:
            b.realise(wid, staging("data/big", 2 * MiB))
        assert "host's disk holding" in e.value.message and "'data/big'" in e.value.message
        assert getpw(b.account_name(wid)) is None and os.listdir(tiny_base) == []


def test_staged_files_past_the_workspaces_disk_name_disk_bytes(tmp_path, skel):
    s = settings(tmp_path, "account-pool", skel)
    with driven(AccountPool(s), (s.pool_prefix,)) as b:
        spec = staging("big", 24 * MiB)
        spec.resources.disk_bytes = 1 * MiB
        with pytest.raises(errors.ResourceExhausted) as e:
            b.realise(new_wid(), spec)
        assert e.value.violations[0][0] == "workspace.spec.resources.disk_bytes"
        assert b.inventory() == {}


def test_a_staged_file_where_the_skeleton_has_a_directory_is_the_callers_to_rename(tmp_path, skel):
    """open() of a directory raised IsADirectoryError: INTERNAL."""
    s = settings(tmp_path, "dynamic-accounts", skel, tmp_path / "homes")
    (tmp_path / "homes").mkdir()
    with driven(DynamicAccounts(s), (s.account_prefix,)) as b:
        wid = new_wid()
        with pytest.raises(errors.InvalidArgument) as e:
            b.realise(wid, staging("bin", 10))
        assert e.value.violations[0][0] == "workspace.spec.software.files[1].path"
        assert "skeleton" in e.value.message and getpw(b.account_name(wid)) is None
