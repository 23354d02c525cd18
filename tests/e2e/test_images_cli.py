"""`vws up` registers the test guest's images when the guest is built (here a stand-in guest
directory named by VWS_GUEST_DIR), once: a second `vws up` adds nothing; without a guest it says
how to build one and the stack comes up all the same."""
from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from tests.e2e.runner import own_data_dir, run_vws
from tests.integration.stack import remove_cgroups

LISTEN = ("--repository-listen", "127.0.0.1:0", "--factory-listen", "127.0.0.1:0", "--manager-listen", "127.0.0.1:0")


@pytest.fixture
def vws(tmp_path):
    tag = secrets.token_hex(2)
    data, env = own_data_dir(tmp_path, f'[manager]\nname = "e2ei-{tag}"\naccount_prefix = "vi{tag}-"\n')

    def run(*args, guest=None, check=0):
        e = dict(env, **({"VWS_GUEST_DIR": str(guest)} if guest is not None else {}))
        return run_vws(args, e, timeout=300, check=check, stdin=subprocess.DEVNULL)
    run.data = data
    yield run
    run("down", check=None)
    remove_cgroups(f"e2ei-{tag}")


def fake_guest(root):
    root.mkdir()
    (root / "vmlinuz").write_bytes(b"kernel" * 1000)
    (root / "initrd.img").write_bytes(b"initrd" * 2000)
    (root / "disk.qcow2").write_bytes(b"QFI\xfb" + bytes(4092))
    (root / "manifest.json").write_text(json.dumps({"kernel_args": "console=ttyS0 quiet vws.test=1"}))
    return root


def test_up_registers_the_test_guest_once(vws, tmp_path):
    guest = fake_guest(tmp_path / "guest")
    first = vws("up", *LISTEN, guest=guest).stdout
    assert "busybox registered" in first and "busybox-disk registered" in first, first
    images = {i["name"]: i for i in json.loads(vws("image", "list", "-o", "json").stdout)["images"]}
    assert set(images) == {"images/busybox", "images/busybox-disk"}
    busybox, disk = images["images/busybox"], images["images/busybox-disk"]
    assert busybox["boot"] == "BOOT_KERNEL" and busybox["kernel_args"] == "console=ttyS0 quiet vws.test=1"
    assert [f["role"] for f in busybox["files"]] == ["ROLE_KERNEL", "ROLE_INITRD"]
    assert disk["boot"] == "BOOT_DISK" and disk["files"][0]["format"] == "FORMAT_QCOW2"
    assert all(i["visibility"] == "VISIBILITY_PUBLIC" and i["guest_agent"] for i in images.values())

    again = vws("up", guest=guest).stdout
    assert "already running" in again and "busybox already registered" in again
    assert "registered from" not in again
    after = {i["name"]: i for i in json.loads(vws("image", "list", "-o", "json").stdout)["images"]}
    assert after == images


def test_up_without_a_guest_says_how_to_build_one(vws, tmp_path):
    up = vws("up", *LISTEN, guest=tmp_path / "no-guest-here").stdout
    assert "`make setup` builds it" in up and "stack up" in up
    assert json.loads(vws("image", "list", "-o", "json").stdout)["images"] == []
