"""The image catalogue and ReportWorkspaceProgress through the real repository server's stubs,
on SQLite and PostgreSQL (the server of test_repository_grpc, with its image store in the data
directory)."""
from __future__ import annotations

import threading

import grpc
import pytest

from tests.integration.test_repository_grpc import MANAGER, create, place, stack, violations  # noqa: F401
from vws.common import converters, model
from vws.native import copysum
from vws.v1 import image_pb2, record_pb2, repository_pb2, workspace_pb2

I, F = image_pb2.Image, image_pb2.ImageFile
QCOW2_HEAD = b"QFI\xfb" + bytes(1020)


def test_images_through_the_stubs(stack, tmp_path):
    repo, _, _, _, _ = stack
    kernel, initrd, disk = tmp_path / "vmlinuz", tmp_path / "initrd.img", tmp_path / "disk.qcow2"
    kernel.write_bytes(b"k" * 10000)
    initrd.write_bytes(b"i" * 20000)
    disk.write_bytes(QCOW2_HEAD)
    made = repo.CreateImage(repository_pb2.CreateImageRequest(image_id="tiny", owner="alice", image=I(
        boot=I.BOOT_KERNEL, visibility=I.VISIBILITY_PUBLIC, kernel_args="console=ttyS0", guest_agent=True,
        files=[F(role=F.ROLE_KERNEL, location=str(kernel)),
               F(role=F.ROLE_INITRD, location=str(initrd), digest=copysum.digest_file(initrd).digest)])),
        timeout=30).image
    assert made.name == "images/tiny" and made.owner == "alice" and made.size_bytes == 30000
    assert made.HasField("create_time") and made.visibility == I.VISIBILITY_PUBLIC and made.guest_agent
    assert [f.digest for f in made.files] == [copysum.digest_file(p).digest for p in (kernel, initrd)]
    assert all(f.location.startswith(str(tmp_path / "images")) for f in made.files)  # DATA_DIR/images
    own = repo.CreateImage(repository_pb2.CreateImageRequest(image_id="bobs-disk", owner="bob", image=I(
        boot=I.BOOT_DISK, files=[F(role=F.ROLE_DISK, location=str(disk))])), timeout=30).image
    assert own.visibility == I.VISIBILITY_PRIVATE and own.files[0].format == F.FORMAT_QCOW2

    assert repo.GetImage(repository_pb2.GetImageRequest(name="images/tiny")).image == made
    assert repo.GetImage(repository_pb2.GetImageRequest(name="tiny")).image == made
    listed = repo.ListImages(repository_pb2.ListImagesRequest(owner="alice")).images
    assert [i.name for i in listed] == ["images/tiny"]
    page = repo.ListImages(repository_pb2.ListImagesRequest(page_size=1))
    assert [i.name for i in page.images] == ["images/bobs-disk"] and page.next_page_token
    rest = repo.ListImages(repository_pb2.ListImagesRequest(page_size=1, page_token=page.next_page_token))
    assert [i.name for i in rest.images] == ["images/tiny"] and not rest.next_page_token

    # Refusals: the field in BadRequest, nothing made.
    for request, code, fields in (
            (repository_pb2.CreateImageRequest(image_id="tiny", owner="alice", image=made), "ALREADY_EXISTS", []),
            (repository_pb2.CreateImageRequest(image_id="x2", owner="alice", image=I(
                boot=I.BOOT_DISK, files=[F(role=F.ROLE_DISK, format=F.FORMAT_RAW, location=str(disk))])),
             "INVALID_ARGUMENT", ["image.files[0].format"]),
            (repository_pb2.CreateImageRequest(image_id="x3", owner="alice", image=I(
                boot=I.BOOT_KERNEL, files=[F(role=F.ROLE_KERNEL, location="vmlinuz")])),
             "INVALID_ARGUMENT", ["image.files[0].location"]),
            (repository_pb2.CreateImageRequest(image_id="x4", owner="alice", image=I(
                boot=I.BOOT_KERNEL, files=[F(role=F.ROLE_KERNEL, location=str(kernel), digest="blake3-4m:" + "a" * 64)])),
             "INVALID_ARGUMENT", ["image.files[0].digest"])):
        with pytest.raises(grpc.RpcError) as e:
            repo.CreateImage(request, timeout=30)
        assert e.value.code().name == code, e.value.details()
        assert violations(e.value) == fields
    assert [i.name for i in repo.ListImages(repository_pb2.ListImagesRequest()).images] == [
        "images/bobs-disk", "images/tiny"]

    repo.DeleteImage(repository_pb2.DeleteImageRequest(name="images/tiny"))
    with pytest.raises(grpc.RpcError) as e:
        repo.GetImage(repository_pb2.GetImageRequest(name="images/tiny"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        repo.DeleteImage(repository_pb2.DeleteImageRequest(name="images/tiny"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    repo.DeleteImage(repository_pb2.DeleteImageRequest(name="bobs-disk"))
    assert not [p for p in (tmp_path / "images").rglob("*") if p.is_file() and p.name != ".lock"]


def test_progress_through_the_stubs(stack):
    repo, records, maddr, _, _ = stack
    ws = create(records).workspace
    place(records, ws.name, maddr, state=workspace_pb2.Workspace.STATE_PROPAGATING)
    events = len(repo.ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(parent=ws.name)).events)
    stream = repo.WatchWorkspace(repository_pb2.WatchWorkspaceRequest(name=ws.name), timeout=30)
    seen, first, with_progress = [], threading.Event(), threading.Event()

    def consume():
        for resp in stream:
            seen.append(resp.workspace)
            first.set()
            if resp.workspace.HasField("progress"):
                with_progress.set()
                return
    t = threading.Thread(target=consume)
    t.start()
    assert first.wait(10)
    p = workspace_pb2.Progress(activity="propagating image busybox", done_bytes=1 << 20, total_bytes=4 << 20,
                               bytes_per_second=1e6, update_time=converters.ts_to_pb(model.utcnow()))
    records.ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(name=ws.name, manager=MANAGER,
                                                                              progress=p))
    assert with_progress.wait(10)
    stream.cancel()
    t.join(10)
    assert seen[-1].progress == p
    got = repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name)).workspace
    assert got.progress == p
    assert len(repo.ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(parent=ws.name)).events) == events

    with pytest.raises(grpc.RpcError) as e:
        records.ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(
            name=ws.name, manager="managers/someone-else", progress=p))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        records.ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(
            name=ws.name, manager=MANAGER, progress=workspace_pb2.Progress(done_bytes=-1)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violations(e.value) == ["progress.done_bytes"]

    # Empty clears; so does the state moving on.
    records.ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(name=ws.name, manager=MANAGER))
    assert not repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name)).workspace.HasField("progress")
    records.ReportWorkspaceProgress(record_pb2.ReportWorkspaceProgressRequest(name=ws.name, manager=MANAGER,
                                                                              progress=p))
    moved = records.ReportWorkspaceState(record_pb2.ReportWorkspaceStateRequest(
        name=ws.name, manager=MANAGER, state=workspace_pb2.Workspace.STATE_READY, message="ready",
        change_time=converters.ts_to_pb(model.utcnow()))).workspace
    assert not moved.HasField("progress")
    assert not repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name)).workspace.HasField("progress")
