"""The image catalogue through the `vws` command line against a real stack (each service its own
process): vws image add/list/show/rm, refusals that name the flag, virtual-machine admission at
the factory, progress in `vws show`, and the new state commands' plumbing."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import grpc

from tests.integration.stack import wait_until
from vws.common import converters, model, tls
from vws.native import copysum
from vws.v1 import (image_pb2, record_pb2, record_pb2_grpc, repository_pb2, repository_pb2_grpc,
                    workspace_pb2)

QCOW2_HEAD = b"QFI\xfb" + bytes(2044)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, (r.args, r.returncode, r.stdout, r.stderr)
    return r.stdout.decode()


def one_line_failure(r: subprocess.CompletedProcess, code: int | None = None) -> str:
    err = r.stderr.decode()
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.args, r.returncode, r.stdout, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def guest_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {"kernel": root / "vmlinuz", "initrd": root / "initrd.img", "disk": root / "disk.qcow2"}
    files["kernel"].write_bytes(b"kernel " * 3000)
    files["initrd"].write_bytes(b"initrd " * 5000)
    files["disk"].write_bytes(QCOW2_HEAD)
    return files


def test_image_commands(stack, tmp_path):
    files = guest_files(tmp_path / "guest")
    kernel, initrd, disk = (str(files[k]) for k in ("kernel", "initrd", "disk"))
    added = json.loads(ok(stack.cli("image", "add", "tiny", "--kernel", kernel, "--initrd", initrd,
                                    "--kernel-args", "console=ttyS0", "--public", "--description", "a test guest",
                                    "-o", "json")))
    assert added["name"] == "images/tiny" and added["boot"] == "BOOT_KERNEL"
    assert added["visibility"] == "VISIBILITY_PUBLIC" and added["guest_agent"] is True
    assert [f["digest"] for f in added["files"]] == [copysum.digest_file(p).digest for p in (kernel, initrd)]
    store = stack.root / "repository" / "images"
    assert all(f["location"].startswith(str(store)) for f in added["files"])

    # A relative path is made absolute by the CLI (the repository reads the file itself).
    env = stack.cli_env()
    r = subprocess.run([sys.executable, "-m", "vws.cli.main", "image", "add", "images/tiny-disk", "--disk",
                        "disk.qcow2", "--no-agent"], cwd=files["disk"].parent, env=env, capture_output=True,
                       timeout=120)
    assert "images/tiny-disk  disk" in ok(r)

    listed = json.loads(ok(stack.cli("image", "list", "-o", "json")))["images"]
    assert [(i["name"], i["boot"]) for i in listed] == [("images/tiny", "BOOT_KERNEL"),
                                                        ("images/tiny-disk", "BOOT_DISK")]
    table = ok(stack.cli("image", "list"))
    assert table.splitlines()[0].split()[:3] == ["NAME", "BOOT", "SIZE"] and "tiny-disk" in table
    shown = ok(stack.cli("image", "show", "tiny"))
    assert "kernel args:" in shown and "console=ttyS0" in shown and added["files"][0]["digest"] in shown
    assert json.loads(ok(stack.cli("image", "show", "images/tiny-disk", "-o", "json")))["files"][0]["format"] \
        == "FORMAT_QCOW2"
    assert "images      tiny, tiny-disk" in ok(stack.cli("site"))

    # Refusals: one line naming the flag.
    wrong = "blake3-4m:" + "0" * 64
    for args, needles, code in (
            (("image", "add", "nofile", "--kernel", str(tmp_path / "missing")), ["--kernel", "does not exist"], 2),
            (("image", "add", "badsum", "--kernel", kernel, "--kernel-digest", wrong),
             ["--kernel-digest", wrong, added["files"][0]["digest"]], 2),
            (("image", "add", "badfmt", "--disk", disk, "--format", "raw"), ["--format", "qcow2"], 2),
            (("image", "add", "Bad_Name", "--kernel", kernel), ["NAME"], 2),
            (("image", "add", "neither"), ["--kernel", "--disk"], 2),
            (("image", "add", "both", "--kernel", kernel, "--disk", disk), ["not both"], 2),
            (("image", "add", "stray", "--disk", disk, "--initrd", initrd), ["--initrd goes with --kernel"], 2),
            (("image", "add", "tiny", "--kernel", kernel), ["ALREADY_EXISTS", "images/tiny"], 1),
            (("image", "show", "nothere"), ["NOT_FOUND", "images/nothere"], 1),
            (("image", "rm", "nothere"), ["NOT_FOUND"], 1)):
        err = one_line_failure(stack.cli(*args), code)
        assert all(n in err for n in needles), (args, err)
    assert len(json.loads(ok(stack.cli("image", "list", "-o", "json")))["images"]) == 2

    # Virtual machines at the factory: an image is needed, one that exists and may be booted.
    cert, key = stack.pki.issue_user("someone-else")  # an image is its caller's: add it as another user
    with grpc.secure_channel(stack.repository.address,
                             tls.channel_credentials(tls.Identity(stack.pki.ca_pem(), cert, key))) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).CreateImage(repository_pb2.CreateImageRequest(
            image_id="private", owner="someone-else", image=image_pb2.Image(
                boot=image_pb2.Image.BOOT_KERNEL, files=[image_pb2.ImageFile(role=image_pb2.ImageFile.ROLE_KERNEL,
                                                                              location=kernel)])), timeout=30)
    missing = one_line_failure(stack.cli("create", "--image", "nothere"))
    private = one_line_failure(stack.cli("create", "--kind", "vm", "--image", "private"))
    assert "NOT_FOUND" in missing and "workspace.spec.software.image" in missing
    assert missing.replace("nothere", "X") == private.replace("private", "X")  # nothing disclosed
    assert "virtual machines boot an image" in one_line_failure(stack.cli("create", "--kind", "vm"))
    assert "setup_script" in one_line_failure(stack.cli("create", "--image", "tiny", "--setup-script", "true"))
    assert "workspace.spec.software.image" in one_line_failure(
        stack.cli("create", "--kind", "account", "--image", "tiny"))
    assert ok(stack.cli("list", "--all", "-o", "json")).count("workspaces/") == 0

    # Removal: the image goes, and its files once no image uses them.
    assert "images/tiny removed" in ok(stack.cli("image", "rm", "tiny"))
    one_line_failure(stack.cli("image", "show", "tiny"))
    ok(stack.cli("image", "rm", "images/tiny-disk"))
    ok(stack.cli("image", "rm", "private"))
    assert json.loads(ok(stack.cli("image", "list", "--all", "-o", "json")))["images"] == []
    assert not [p for p in store.rglob("*") if p.is_file() and p.name != ".lock"]
    assert "none yet" in ok(stack.cli("site"))


def test_progress_and_state_commands(stack):
    created = json.loads(ok(stack.cli("create", "--memory", "64M", "--wait", "-o", "json")))["workspace"]
    name, short = created["name"], created["name"].split("/", 1)[1]
    manager = created["endpoint"]["manager"]
    # As its manager reports during an image copy (the state does not matter to the display).
    progress = workspace_pb2.Progress(activity="propagating image busybox", done_bytes=48 << 20,
                                      total_bytes=64 << 20, bytes_per_second=8 << 20,
                                      update_time=converters.ts_to_pb(model.utcnow()))
    cert, key = stack.pki.issue_manager("progress-reporter")  # only managers report progress
    with grpc.secure_channel(stack.repository.address,
                             tls.channel_credentials(tls.Identity(stack.pki.ca_pem(), cert, key))) as channel:
        record_pb2_grpc.RecordServiceStub(channel).ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(
            name=name, manager=manager, progress=progress), timeout=10)
    shown = wait_until(lambda: (lambda out: out if "progress:" in out else None)(ok(stack.cli("show", short))),
                       what="progress in vws show")
    assert "propagating image busybox: 75% (48M of 64M, 8M/s)" in shown
    assert json.loads(ok(stack.cli("show", short, "-o", "json")))["progress"]["done_bytes"] == str(48 << 20)

    # The state commands reach the manager; an account cannot be suspended, and says so in a line.
    assert "FAILED_PRECONDITION" in one_line_failure(stack.cli("suspend", short))
    assert "FAILED_PRECONDITION" in one_line_failure(stack.cli("reboot", short))
    stopped = json.loads(ok(stack.cli("stop", short, "--force", "-o", "json")))
    assert stopped["state"] == "STATE_READY"
    assert "progress" not in json.loads(ok(stack.cli("show", short, "-o", "json")))  # the state moved
    ok(stack.cli("destroy", short, "--wait"))
