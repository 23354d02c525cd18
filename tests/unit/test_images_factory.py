"""The factory admits virtual machines: the image is required, must exist and be the owner's
to boot (a private image of someone else is NOT_FOUND, like a missing one), is normalised to
images/{id}, and a raw disk image sets the least disk; set-up scripts and staged files are
refused for now."""
from __future__ import annotations

import pytest

from tests.unit.test_factory import FakeRecords, make, manager
from vws.common import errors, model
from vws.common.config import FactorySettings
from vws.factory.validation import IMAGE_FIELD, Limits

GiB, MiB = 1024 ** 3, 1024 ** 2
VM = model.Kind.VIRTUAL_MACHINE


def image(image_id, owner="alice", public=False, boot=model.ImageBoot.KERNEL, disk_size=0,
          fmt=model.FileFormat.RAW):
    files = [model.ImageFile(model.FileRole.KERNEL, size_bytes=100)] if boot is model.ImageBoot.KERNEL else \
        [model.ImageFile(model.FileRole.DISK, fmt, size_bytes=disk_size)]
    return model.Image(name=f"images/{image_id}", boot=boot, files=files, owner=owner,
                       visibility=model.ImageVisibility.PUBLIC if public else model.ImageVisibility.PRIVATE)


class Records(FakeRecords):
    def __init__(self, managers, images):
        super().__init__(managers)
        self.images = {i.name: i for i in images}
        self.asked: list[str] = []

    def get_image(self, name):
        self.asked.append(name)
        return self.images.get(name)


@pytest.fixture
def limits():
    return Limits.from_settings(FactorySettings(max_disk=100 * GiB))


def factory(limits, *images):
    f, _, managers = make(limits, [manager("a", kinds=(VM, model.Kind.UNIX_ACCOUNT))])
    records = Records(f.records._managers, images)
    f.records = records
    managers.records = records
    return f, records


def vm(image_name="", owner="alice", **spec):
    software = spec.pop("software", model.Software(image=image_name))
    return model.Workspace(name="", owner=owner, spec=model.WorkspaceSpec(kind=VM, software=software, **spec))


def violations(exc_info):
    return [f for f, _ in exc_info.value.violations]


def test_a_vm_boots_a_public_or_own_image_named_either_way(limits):
    f, records = factory(limits, image("busybox", owner="root", public=True), image("mine"))
    for given in ("busybox", "images/busybox"):
        out = f.create(f"r-{given.replace('/', '-')}", vm(given))
        assert out.state is model.State.RUNNING
        assert records.records[out.name].spec.software.image == "images/busybox"
    assert records.records[f.create("r-mine", vm("mine")).name].spec.software.image == "images/mine"
    assert records.asked == ["images/busybox", "images/busybox", "images/mine"]


def test_a_vm_without_an_image_is_told_how_to_give_one(limits):
    f, records = factory(limits)
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r", vm(""))
    assert violations(e) == [IMAGE_FIELD]
    assert e.value.violations[0][1] == ("virtual machines boot an image; give one, e.g. --image busybox "
                                        "(`vws image list` shows them)")
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r", vm("Not An Image"))
    assert violations(e) == [IMAGE_FIELD]
    assert records.records == {} and records.asked == []


def test_a_missing_image_and_someone_elses_private_one_get_the_same_answer(limits):
    f, records = factory(limits, image("secret", owner="bob"))
    answers = []
    for name in ("nothere", "secret"):
        with pytest.raises(errors.NotFound) as e:
            f.create(f"r-{name}", vm(name))
        assert e.value.message.startswith(IMAGE_FIELD + ":")
        answers.append(e.value.message.replace(name, "X"))
    assert answers[0] == answers[1]
    assert records.records == {}
    # Its owner boots it.
    assert f.create("r-bob", vm("secret", owner="bob")).state is model.State.RUNNING


def test_setup_scripts_and_files_are_refused_for_vms(limits):
    f, records = factory(limits, image("busybox", public=True))
    software = model.Software(image="busybox", setup_script="echo hi",
                              files=[model.StagedFile("a.txt", b"x")])
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r", vm(software=software))
    assert violations(e) == ["workspace.spec.software.setup_script", "workspace.spec.software.files"]
    assert all("not supported for virtual machines" in d for _, d in e.value.violations)
    assert records.records == {}


def test_an_image_on_another_kind_is_refused(limits):
    f, _ = factory(limits, image("busybox", public=True))
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r", model.Workspace(name="", owner="alice", spec=model.WorkspaceSpec(
            kind=model.Kind.UNIX_ACCOUNT, software=model.Software(image="busybox"))))
    assert violations(e) == [IMAGE_FIELD]


def test_a_raw_disk_image_sets_the_least_disk(limits):
    big = image("big", public=True, boot=model.ImageBoot.DISK, disk_size=3 * GiB + 1)
    qcow = image("qcow", public=True, boot=model.ImageBoot.DISK, disk_size=5 * GiB, fmt=model.FileFormat.QCOW2)
    huge = image("huge", public=True, boot=model.ImageBoot.DISK, disk_size=200 * GiB)
    f, records = factory(limits, big, qcow, huge)
    # No disk asked for: the default (1G) is raised to the image's disk, in whole MiB.
    out = f.create("r1", vm("big"))
    assert records.records[out.name].spec.resources.disk_bytes == 3 * GiB + MiB
    # Asked for enough: kept.
    out = f.create("r2", vm("big", resources=model.Resources(disk_bytes=10 * GiB)))
    assert records.records[out.name].spec.resources.disk_bytes == 10 * GiB
    # Asked for too little: refused, naming the field and the size to give.
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r3", vm("big", resources=model.Resources(disk_bytes=2 * GiB)))
    assert violations(e) == ["workspace.spec.resources.disk_bytes"] and "3.0G" in e.value.message
    # Bigger than the site allows anyone.
    with pytest.raises(errors.InvalidArgument) as e:
        f.create("r4", vm("huge"))
    assert violations(e) == ["workspace.spec.resources.disk_bytes"] and "maximum" in e.value.message
    # qcow2: its virtual size is the manager's to check; the file size says nothing.
    out = f.create("r5", vm("qcow"))
    assert records.records[out.name].spec.resources.disk_bytes == limits.defaults.disk_bytes


def test_vms_are_offered_when_a_manager_offers_them(limits):
    f, _ = factory(limits)
    kinds = {k: (a, r) for k, a, r in f.site_info()["kinds"]}
    assert kinds[VM] == (True, "4 free on 1 manager(s)")
    f2, _, _ = make(limits, [manager("b")])
    kinds = {k: (a, r) for k, a, r in f2.site_info()["kinds"]}
    assert kinds[VM] == (False, "no available manager offers it right now")
