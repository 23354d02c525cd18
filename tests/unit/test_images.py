"""The repository's image catalogue (service layer) on SQLite and PostgreSQL: every refusal
names its field, files land content-addressed in the image store, nothing is left behind
when a create fails, and shared files live as long as an image uses them."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pathlib

import pytest

from vws.common import errors, model
from vws.common.config import RepositorySettings
from vws.native import copysum
from vws.repository import db
from vws.repository import images as image_store
from vws.repository.service import RepositoryService

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
K, I, D = model.FileRole.KERNEL, model.FileRole.INITRD, model.FileRole.DISK
RAW, QCOW2 = model.FileFormat.RAW, model.FileFormat.QCOW2
QCOW2_HEAD = b"QFI\xfb" + b"\0\0\0\3" + bytes(4088)


class NoManagers:
    def destroy(self, address, name, reason):  # pragma: no cover - not used here
        raise AssertionError("no manager calls in these tests")


@pytest.fixture
def env(database_url, tmp_path):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    store = tmp_path / "store"
    service = RepositoryService(db.UnitOfWork(engine), RepositorySettings(image_store=store), NoManagers(),
                                clock=lambda: T0)
    yield service, store
    service.uow.dispose()


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()

    def make(name: str, content: bytes) -> str:
        path = src / name
        path.write_bytes(content)
        return str(path)
    make.dir = src
    return make


def kernel_image(kernel: str, initrd: str | None = None, **kw) -> model.Image:
    fs = [model.ImageFile(K, location=kernel)] + ([model.ImageFile(I, location=initrd)] if initrd else [])
    return model.Image(name="", boot=model.ImageBoot.KERNEL, files=fs, **kw)


def disk_image(disk: str, fmt=model.FileFormat.UNSPECIFIED, **kw) -> model.Image:
    return model.Image(name="", boot=model.ImageBoot.DISK, files=[model.ImageFile(D, fmt, location=disk)], **kw)


def stored(store: pathlib.Path) -> list[str]:
    """Every file in the store but its lock and the empty incoming directory."""
    return sorted(str(p.relative_to(store)) for p in store.rglob("*")
                  if p.is_file() and p.name != ".lock")


def fields(exc_info) -> list[str]:
    return [f for f, _ in exc_info.value.violations]


# ----------------------------------------------------------------------------- create, get

def test_a_kernel_image_is_copied_into_the_store_by_digest(env, files):
    service, store = env
    kernel, initrd = files("vmlinuz", b"K" * 5000), files("initrd.img", b"I" * (5 << 20))
    image = service.images.create_image("busybox", kernel_image(kernel, initrd, kernel_args="console=ttyS0",
                                                         description="test guest"), "alice")
    assert image.name == "images/busybox" and image.owner == "alice" and image.create_time == T0
    assert image.visibility is model.ImageVisibility.PRIVATE  # the default
    assert image.boot is model.ImageBoot.KERNEL and image.kernel_args == "console=ttyS0"
    assert [f.role for f in image.files] == [K, I]
    for f, src in zip(image.files, (kernel, initrd)):
        want = copysum.digest_file(src)
        assert f.digest == want.digest and f.size_bytes == want.size and f.format is RAW
        assert f.location == str(store / want.digest.split(":")[1] / f.role.value.lower())
        assert pathlib.Path(f.location).read_bytes() == pathlib.Path(src).read_bytes()
    assert image.size_bytes == 5000 + (5 << 20)
    assert service.images.get_image("images/busybox") == image == service.images.get_image("busybox")
    assert pathlib.Path(kernel).exists()  # the source is copied, not moved


def test_a_disk_image_has_its_format_detected_or_checked(env, files):
    service, _ = env
    qcow = files("disk.qcow2", QCOW2_HEAD)
    raw = files("disk.raw", b"\0" * 4096 + b"boot")
    assert service.images.create_image("qa", disk_image(qcow), "alice").files[0].format is QCOW2
    assert service.images.create_image("qb", disk_image(qcow, QCOW2), "alice").files[0].format is QCOW2
    assert service.images.create_image("ra", disk_image(raw), "alice").files[0].format is RAW
    assert service.images.create_image("rb", disk_image(raw, RAW), "alice").files[0].format is RAW


def test_an_expected_digest_that_matches_is_accepted(env, files):
    service, _ = env
    kernel = files("vmlinuz", b"kernel")
    want = copysum.digest_file(kernel).digest
    image = kernel_image(kernel)
    image.files[0].digest = want.upper().replace("BLAKE3-4M", "blake3-4m")
    assert service.images.create_image("kk", image, "alice").files[0].digest == want


def test_a_digest_mismatch_names_the_field_with_both_digests_and_leaves_nothing(env, files):
    service, store = env
    kernel, initrd = files("vmlinuz", b"kernel"), files("initrd.img", b"initrd")
    image = kernel_image(kernel, initrd)
    wrong = "blake3-4m:" + "0" * 64
    image.files[1].digest = wrong
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.create_image("kk", image, "alice")
    assert fields(e) == ["image.files[1].digest"]
    assert wrong in e.value.message and copysum.digest_file(initrd).digest in e.value.message
    with pytest.raises(errors.NotFound):
        service.images.get_image("kk")
    assert stored(store) == []  # the kernel copied before the initrd failed went too


def test_a_failure_while_recording_removes_the_copies(env, files, monkeypatch):
    service, store = env
    kernel = files("vmlinuz", b"kernel")

    def broken(session, image):
        raise RuntimeError("database went away")
    monkeypatch.setattr(image_store, "insert", broken)
    with pytest.raises(RuntimeError):
        service.images.create_image("kk", kernel_image(kernel), "alice")
    assert stored(store) == []


def test_a_taken_name_is_already_exists_and_copies_nothing(env, files):
    service, store = env
    service.images.create_image("kk", kernel_image(files("vmlinuz", b"one")), "alice")
    before = stored(store)
    with pytest.raises(errors.AlreadyExists, match="images/kk"):
        service.images.create_image("kk", kernel_image(files("other", b"two")), "bob")
    assert stored(store) == before and service.images.get_image("kk").owner == "alice"


def test_a_caller_who_is_not_the_administrator_adds_only_files_every_user_may_read(env, files):
    """The repository reads as root: a user may not have it copy /etc/shadow into an image."""
    service, store = env
    secret = files("secret", b"root only")
    os.chmod(secret, 0o600)
    with pytest.raises(errors.PermissionDenied, match=r"image.files\[0\].location.*chmod o\+r"):
        service.images.create_image("stolen", kernel_image(secret), "mallory", privileged=False)
    with pytest.raises(errors.PermissionDenied):
        service.images.create_image("shadow", kernel_image("/etc/shadow"), "mallory", privileged=False)
    assert stored(store) == []
    os.chmod(secret, 0o644)
    assert service.images.create_image("shared", kernel_image(secret), "mallory", privileged=False).owner == "mallory"
    os.chmod(secret, 0o600)
    assert service.images.create_image("admins", kernel_image(secret), "root").name == "images/admins"


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("image_id", ["", "Busybox", "1abc", "a", "bad_name", "x" * 64, "images/"])
def test_a_bad_image_id_is_refused(env, files, image_id):
    service, _ = env
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.create_image(image_id, kernel_image(files("vmlinuz", b"k")), "alice")
    assert fields(e) == ["image_id"]


def test_refusals_name_each_field(env, files, tmp_path):
    service, store = env
    kernel, qcow, raw = files("vmlinuz", b"k"), files("d.qcow2", QCOW2_HEAD), files("d.raw", b"raw disk")
    empty = files("empty", b"")
    (tmp_path / "a-directory").mkdir()
    os.mkfifo(tmp_path / "a-fifo")
    cases = [
        # (image, owner, the fields named)
        (kernel_image(kernel), "", ["owner"]),
        (dataclasses.replace(kernel_image(kernel), boot=model.ImageBoot.UNSPECIFIED), "a", ["image.boot"]),
        (model.Image(name="", boot=model.ImageBoot.KERNEL), "a", ["image.files"]),
        (model.Image(name="", boot=model.ImageBoot.KERNEL, files=[model.ImageFile(I, location=kernel)]), "a",
         ["image.files"]),
        (model.Image(name="", boot=model.ImageBoot.KERNEL,
                     files=[model.ImageFile(K, location=kernel), model.ImageFile(K, location=kernel)]), "a",
         ["image.files[1].role"]),
        (model.Image(name="", boot=model.ImageBoot.KERNEL,
                     files=[model.ImageFile(K, location=kernel), model.ImageFile(D, location=raw)]), "a",
         ["image.files[1].role"]),
        (model.Image(name="", boot=model.ImageBoot.DISK, files=[model.ImageFile(K, location=kernel)]), "a",
         ["image.files[0].role", "image.files"]),
        (model.Image(name="", boot=model.ImageBoot.DISK,
                     files=[model.ImageFile(D, location=raw), model.ImageFile(D, location=qcow)]), "a",
         ["image.files[1].role"]),
        (model.Image(name="", boot=model.ImageBoot.DISK, files=[model.ImageFile(model.FileRole.UNSPECIFIED,
                                                                                location=raw)]), "a",
         ["image.files[0].role", "image.files"]),
        (disk_image(qcow, RAW), "a", ["image.files[0].format"]),
        (disk_image(raw, QCOW2), "a", ["image.files[0].format"]),
        (model.Image(name="", boot=model.ImageBoot.KERNEL, files=[model.ImageFile(K, QCOW2, location=kernel)]),
         "a", ["image.files[0].format"]),
        (kernel_image(qcow), "a", ["image.files[0].location"]),
        (kernel_image("vmlinuz"), "a", ["image.files[0].location"]),
        (kernel_image(""), "a", ["image.files[0].location"]),
        (kernel_image(str(tmp_path / "missing")), "a", ["image.files[0].location"]),
        (kernel_image(str(tmp_path / "a-directory")), "a", ["image.files[0].location"]),
        (kernel_image(str(tmp_path / "a-fifo")), "a", ["image.files[0].location"]),
        (kernel_image(empty), "a", ["image.files[0].location"]),
        (kernel_image(kernel, str(tmp_path / "missing")), "a", ["image.files[1].location"]),
        (disk_image(raw, kernel_args="console=ttyS0"), "a", ["image.kernel_args"]),
        (kernel_image(kernel, kernel_args="a\nb"), "a", ["image.kernel_args"]),
        (kernel_image(kernel, description="x" * 5000), "a", ["image.description"]),
    ]
    for image, owner, want in cases:
        with pytest.raises(errors.InvalidArgument) as e:
            service.images.create_image("img", image, owner)
        assert fields(e) == want, (image, e.value.message)
        assert all(d for _, d in e.value.violations)
    bad_digest = kernel_image(kernel)
    bad_digest.files[0].digest = "sha256:abc"
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.create_image("img", bad_digest, "a")
    assert fields(e) == ["image.files[0].digest"] and "blake3-4m:" in e.value.message
    assert stored(store) == []
    assert service.images.list_images() == ([], "")


def test_every_violation_comes_in_one_answer(env, tmp_path):
    service, _ = env
    image = model.Image(name="", boot=model.ImageBoot.KERNEL, files=[
        model.ImageFile(K, location="relative"), model.ImageFile(I, location=str(tmp_path / "nope"))])
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.create_image("Bad", image, "")
    assert fields(e) == ["image_id", "owner", "image.files[0].location", "image.files[1].location"]
    assert "absolute path" in e.value.message and "does not exist" in e.value.message


def test_the_qcow2_mismatch_message_says_what_the_file_is(env, files):
    service, _ = env
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.create_image("dd", disk_image(files("d.qcow2", QCOW2_HEAD), RAW), "a")
    assert "is qcow2" in e.value.message and "FORMAT_QCOW2" in e.value.message


# ----------------------------------------------------------------------------- sharing and delete

def test_images_share_a_file_until_the_last_one_goes(env, files):
    service, store = env
    kernel = files("vmlinuz", b"the same kernel")
    a = service.images.create_image("aa", kernel_image(kernel, files("i1", b"initrd one")), "alice")
    b = service.images.create_image("bb", kernel_image(kernel, files("i2", b"initrd two")), "bob")
    assert a.files[0].location == b.files[0].location and a.files[1].location != b.files[1].location
    assert len(stored(store)) == 3
    service.images.delete_image("images/aa")
    with pytest.raises(errors.NotFound):
        service.images.get_image("aa")
    assert pathlib.Path(b.files[0].location).exists() and not pathlib.Path(a.files[1].location).exists()
    assert not pathlib.Path(a.files[1].location).parent.exists()  # its directory went too
    service.images.delete_image("bb")
    assert stored(store) == [] and sorted(p.name for p in store.iterdir()) == [".incoming", ".lock"]


def test_delete_and_get_of_a_missing_image(env):
    service, _ = env
    for call in (service.images.get_image, service.images.delete_image):
        with pytest.raises(errors.NotFound, match="images/nothere"):
            call("images/nothere")
        with pytest.raises(errors.InvalidArgument) as e:
            call("images/Bad Name")
        assert fields(e) == ["name"]


# ----------------------------------------------------------------------------- list

def test_list_shows_public_and_own_images_by_name_in_pages(env, files):
    service, _ = env
    kernel = files("vmlinuz", b"k")
    for image_id, owner, vis in (("zeta", "alice", model.ImageVisibility.PUBLIC),
                                 ("alpha", "bob", model.ImageVisibility.PRIVATE),
                                 ("beta", "alice", model.ImageVisibility.PRIVATE),
                                 ("gamma", "bob", model.ImageVisibility.PUBLIC),
                                 ("delta", "carol", model.ImageVisibility.UNSPECIFIED)):
        service.images.create_image(image_id, kernel_image(kernel, visibility=vis), owner)
    names = lambda images: [i.name.split("/")[1] for i in images]  # noqa: E731
    everything, token = service.images.list_images()
    assert names(everything) == ["alpha", "beta", "delta", "gamma", "zeta"] and token == ""
    assert names(service.images.list_images("alice")[0]) == ["beta", "gamma", "zeta"]
    assert names(service.images.list_images("bob")[0]) == ["alpha", "gamma", "zeta"]
    assert names(service.images.list_images("dave")[0]) == ["gamma", "zeta"]
    assert everything[0].files and everything[0].files[0].role is K
    page, token = service.images.list_images("alice", page_size=2)
    assert names(page) == ["beta", "gamma"] and token
    rest, token2 = service.images.list_images("alice", page_size=2, page_token=token)
    assert names(rest) == ["zeta"] and token2 == ""
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.list_images("bob", page_size=2, page_token=token)  # another listing's token
    assert fields(e) == ["page_token"]
    with pytest.raises(errors.InvalidArgument) as e:
        service.images.list_images(page_size=-1)
    assert fields(e) == ["page_size"]
