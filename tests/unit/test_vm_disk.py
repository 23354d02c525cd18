"""A VM workspace's disk over its image's: an image disk qemu cannot open (it passed the
repository's check: the qcow2 magic, then anything) is FAILED_PRECONDITION naming the image,
not CalledProcessError (INTERNAL) (issue 17)."""
from __future__ import annotations

import shutil

import pytest

from vws.common import errors, model
from vws.manager.backends.vm import provisioning

pytestmark = pytest.mark.requires(shutil.which("qemu-img") is None, "needs qemu-img")
D = model.FileRole.DISK


def image() -> model.Image:
    return model.Image(name="images/broken", boot=model.ImageBoot.DISK,
                       files=[model.ImageFile(D, model.FileFormat.QCOW2)])


def test_an_image_disk_qemu_cannot_open_is_the_images_owners_to_fix(tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(b"QFI\xfb" + bytes(range(256)) * 16)
    with pytest.raises(errors.FailedPrecondition) as e:
        provisioning.make_disk("w1", model.WorkspaceSpec(), image(), {D: base}, tmp_path / "overlay.qcow2")
    assert "image broken" in e.value.message and "replace it" in e.value.message
    assert len(e.value.message) < 1024 and not (tmp_path / "overlay.qcow2").exists()


def test_a_working_image_disk_gets_an_overlay_of_its_size_at_least(tmp_path):
    base = tmp_path / "base.qcow2"
    assert provisioning.subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "2G"]).returncode == 0
    size = provisioning.make_disk("w1", model.WorkspaceSpec(), image(), {D: base}, tmp_path / "overlay.qcow2")
    assert size == 2 * 1024 ** 3 and (tmp_path / "overlay.qcow2").exists()
