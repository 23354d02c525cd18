"""Admission refuses, with every violation named, what a manager could not make of the spec
alone (issue 17, items 4 and 5)."""
from __future__ import annotations

import dataclasses

import grpc
import pytest

from vws.common import errors, model
from vws.common.config import FactorySettings
from vws.factory import validation
from vws.factory.validation import Limits, admit

MiB = 1024 ** 2
GiB = 1024 ** 3


@pytest.fixture
def limits():
    return Limits.from_settings(FactorySettings())


def ws(software=None, **resources) -> model.Workspace:
    return model.Workspace(name="", owner="alice", spec=model.WorkspaceSpec(
        kind=model.Kind.UNIX_ACCOUNT, software=software or model.Software(), resources=model.Resources(**resources)))


def refused(workspace, limits) -> dict[str, str]:
    with pytest.raises(errors.InvalidArgument) as e:
        admit(workspace, limits)
    return dict(e.value.violations)


def test_a_file_name_longer_than_the_filesystem_takes_is_refused(limits):
    ok = "d/" + "n" * 255
    admit(ws(model.Software(files=[model.StagedFile(ok, b"x")])), limits)
    v = refused(ws(model.Software(files=[model.StagedFile("d/" + "n" * 256, b"x"),
                                         model.StagedFile("é" * 128, b"x")])), limits)
    assert "255 bytes" in v["workspace.spec.software.files[0].path"]
    assert "255 bytes" in v["workspace.spec.software.files[1].path"]  # 256 bytes in UTF-8
    v = refused(ws(model.Software(files=[model.StagedFile("/".join(["d" * 200] * 6), b"x")])), limits)
    assert "at most 1024 bytes" in v["workspace.spec.software.files[0].path"]


@pytest.mark.parametrize("paths", [["a/b", "a"], ["a", "a/b/c"]])
def test_a_file_where_a_directory_must_be_is_refused(limits, paths):
    v = refused(ws(model.Software(files=[model.StagedFile(p, b"x") for p in paths])), limits)
    i = paths.index("a")
    assert "must be a directory" in v[f"workspace.spec.software.files[{i}].path"]


def test_a_file_where_the_environment_is_written_is_refused(limits):
    env = {"A": "1"}
    v = refused(ws(model.Software(environment=env, files=[model.StagedFile(".vws", b"x"),
                                                          model.StagedFile(".profile/x", b"x")])), limits)
    assert "environment" in v["workspace.spec.software.files[0].path"]
    assert "environment" in v["workspace.spec.software.files[1].path"]
    # without an environment vws writes neither
    admit(ws(model.Software(files=[model.StagedFile(".vws", b"x"), model.StagedFile(".profile/x", b"x")])), limits)


def test_files_larger_than_the_disk_are_refused_naming_both_fields(limits):
    files = [model.StagedFile(f"f{i}", b"x" * (4 * MiB)) for i in range(8)]  # 32 MiB
    v = refused(ws(model.Software(files=files), disk_bytes=16 * MiB), limits)
    assert "disk_bytes" in v["workspace.spec.software.files"] and "16M" in v["workspace.spec.software.files"]
    admit(ws(model.Software(files=files), disk_bytes=64 * MiB), limits)


def test_an_environment_over_the_kernels_argument_limit_is_refused(limits, monkeypatch):
    monkeypatch.setattr(validation, "ARG_MAX", 64 * 1024)
    env = {f"V{i}": "x" * 1000 for i in range(40)}  # 40 KiB as the exec path passes it: over half of 64 KiB
    v = refused(ws(model.Software(environment=env)), limits)
    assert "ARG_MAX" in v["workspace.spec.software.environment"]
    admit(ws(model.Software(environment=dict(list(env.items())[:20]))), limits)


def test_every_violation_comes_in_one_answer(limits):
    v = refused(ws(model.Software(files=[model.StagedFile("a/b", b"x"), model.StagedFile("a", b"x"),
                                         model.StagedFile("n" * 300, b"x")]), memory_bytes=-1), limits)
    assert set(v) == {"workspace.spec.software.files[1].path", "workspace.spec.software.files[2].path",
                      "workspace.spec.resources.memory_bytes"}


@pytest.mark.parametrize("name", ["VWSENV_0", "VWSENV_X", "__vws_n"])
def test_names_the_exec_path_reserves_are_refused_at_create(limits, name):
    v = refused(ws(model.Software(environment={name: "1", "OK": "1"})), limits)
    assert set(v) == {f"workspace.spec.software.environment[{name}]"} and "reserved" in v[
        f"workspace.spec.software.environment[{name}]"]


def test_the_largest_environment_admitted_leaves_an_exec_most_of_the_argument_limit(limits):
    largest = {f"V{i:03d}" + "N" * 124: "x" * validation.MAX_ENV_VALUE for i in range(validation.MAX_ENV)}
    admit(ws(model.Software(environment=largest)), limits)
    size = validation.exec_bytes(validation.exec_strings(largest))
    assert size <= 2 * 1024 ** 2 // 2  # ARG_MAX with the usual 8 MiB stack, halved
    v = refused(ws(model.Software(environment={**largest, "ONE_MORE": "x"})), limits)
    assert "argument limit" in v["workspace.spec.software.environment"]
    v = refused(ws(model.Software(environment={"BIG": "x" * (validation.MAX_ENV_VALUE + 1)})), limits)
    assert "argument limit" in v["workspace.spec.software.environment[BIG]"]


@pytest.mark.parametrize("field,value,floor", [
    ("memory_bytes", 9, "16M"), ("memory_bytes", 64 * 1024, "16M"), ("max_processes", 1, "8 processes"),
    ("cpu_millis", 5, "10m"), ("disk_bytes", MiB, "16M"), ("network_bits_per_second", 1000, "1000000 bit/s")])
def test_a_resource_under_the_sites_floor_is_refused_naming_the_floor(limits, field, value, floor):
    kind = model.Kind.SANDBOX if field == "network_bits_per_second" else model.Kind.UNIX_ACCOUNT
    w = ws(**{field: value})
    w.spec.kind = kind
    v = refused(w, limits)
    assert set(v) == {f"workspace.spec.resources.{field}"}
    assert f"minimum of {floor}" in v[f"workspace.spec.resources.{field}"]
    floors = ws(**{f: getattr(limits.minima, f) for f in ("memory_bytes", "disk_bytes", "cpu_millis",
                                                           "max_processes")})
    assert admit(floors, limits).spec.resources == dataclasses.replace(
        limits.minima, network_bits_per_second=0)  # the floors themselves are admitted


def test_floors_are_settings_stated_by_the_site_and_a_default_under_one_is_refused():
    s = FactorySettings(min_memory=32 * MiB, min_max_processes=16)
    limits = Limits.from_settings(s)
    assert (limits.minima.memory_bytes, limits.minima.max_processes) == (32 * MiB, 16)
    with pytest.raises(errors.InvalidArgument) as e:
        Limits.from_settings(FactorySettings(min_memory=GiB, default_memory=512 * MiB))
    assert "default_memory" in dict(e.value.violations) and "min_memory" in e.value.message


def site_info(limits):
    """GetSiteInfo as the factory answers it, with no manager registered."""
    from vws.factory.servicer import FactoryServicer
    from vws.factory.service import WorkspaceFactory

    class NoManagers:
        def managers(self):
            return []
    return FactoryServicer(WorkspaceFactory(limits, NoManagers(), None)).GetSiteInfo(None, None)


def vws_site(info, monkeypatch, capsys) -> str:
    """What `vws site` prints for that answer."""
    from vws.cli import workspaces

    class Conn:
        factory_address = "f:1"

        def __init__(self, args):
            pass

        def site(self):
            return info

        def repository(self):
            raise grpc.RpcError()  # no images listed
    monkeypatch.setattr(workspaces, "Connection", Conn)
    monkeypatch.setattr(workspaces.out, "emit", lambda args, msg, human: human(msg))
    assert workspaces.cmd_site(None) == 0
    return capsys.readouterr().out


def test_get_site_info_states_the_floors_of_the_site_and_of_each_kind(limits):
    info = site_info(limits)
    assert info.min_resources.memory_bytes == 16 * MiB and info.min_resources.max_processes == 8
    assert info.min_resources.cpu_millis == 10 and info.min_resources.disk_bytes == 16 * MiB
    least = {k.kind: k.min_resources for k in info.kinds}
    assert least[3].memory_bytes == 128 * MiB and least[1].memory_bytes == 16 * MiB  # vm, account


def test_vws_site_prints_the_floors(limits, monkeypatch, capsys):
    text = vws_site(site_info(limits), monkeypatch, capsys)
    assert "memory      min 16M, default 512M, max 64G" in text
    assert "processes   min 8, default 512, max 32768" in text
    assert "cpu         min 10m," in text
    assert "(at least 128M memory, 1000m cpu)" in text and text.count("at least") == 1


def test_a_virtual_machine_has_the_floors_its_guest_needs(limits):
    vm = model.Workspace(name="", owner="alice", spec=model.WorkspaceSpec(
        kind=model.Kind.VIRTUAL_MACHINE, software=model.Software(image="busybox"),
        resources=model.Resources(memory_bytes=16 * MiB, cpu_millis=10)))
    v = refused(vm, limits)
    assert "minimum of 128M, the least a vm workspace" in v["workspace.spec.resources.memory_bytes"]
    assert "minimum of 1000m" in v["workspace.spec.resources.cpu_millis"]
    vm.spec.resources = model.Resources()
    assert admit(vm, limits).spec.resources.cpu_millis == 1000  # the default, raised to the floor
    assert validation.floors(limits, model.Kind.UNIX_ACCOUNT) == limits.minima


def test_a_vm_environment_the_guest_agent_cannot_carry_is_refused_at_admission(limits):
    """The manager refused it (agent.check_environment) after the factory had admitted it: a
    kernel's argument limit is far larger than what a guest agent takes in one command."""
    from vws.manager.backends.vm import agent
    env = {f"V{i}": "v" * 4000 for i in range(30)}  # ~120 KB: the kernel's limit takes it
    vm = model.Workspace(name="", owner="alice", spec=model.WorkspaceSpec(
        kind=model.Kind.VIRTUAL_MACHINE, software=model.Software(image="busybox", environment=env)))
    v = refused(vm, limits)
    assert "guest agent" in v["workspace.spec.software.environment"]
    with pytest.raises(errors.InvalidArgument):
        agent.check_environment(env)
    account = ws(model.Software(environment=env))
    assert admit(account, limits)  # an account's programs start through the kernel alone
    # Whatever admission takes, the manager takes too: the largest admitted environment.
    n = 1
    while not validation.check_agent_room({"A": "a" * (n * 1000)}, agent.MAX_COMMAND_BYTES):
        n += 1
    agent.check_environment({"A": "a" * ((n - 1) * 1000)})
