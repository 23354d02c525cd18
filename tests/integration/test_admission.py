"""Whatever the factory admits can run a program, and what a manager could not make is refused
at admission, with nothing left behind (issue 17, items 4 and 5), through a real stack."""
from __future__ import annotations

import uuid

import grpc
import pytest

from tests.integration.test_vms import add_image, create_vm, guest  # noqa: F401 (guest: a fixture)
from tests.integration.test_workspaces import W, create, repo, run, violations
from vws.common import clients
from vws.factory import validation
from vws.v1 import factory_pb2, repository_pb2, workspace_pb2

MiB = 1024 ** 2
Spec = workspace_pb2.WorkspaceSpec
Software, File = workspace_pb2.SoftwareConfiguration, workspace_pb2.StagedFile


def floors(stack) -> workspace_pb2.ResourceAllocation:
    return clients.factory(stack.factory.address).GetSiteInfo(factory_pb2.GetSiteInfoRequest(),
                                                              timeout=10).min_resources


@pytest.mark.parametrize("kind", [Spec.KIND_UNIX_ACCOUNT, Spec.KIND_SANDBOX])
def test_a_workspace_at_every_floor_runs_true(stack, kind):
    least = floors(stack)
    assert least.memory_bytes == 16 * MiB and least.max_processes == 8 and least.cpu_millis == 10
    if kind == Spec.KIND_UNIX_ACCOUNT:
        least.network_bits_per_second = 0  # shares the host's network: nothing to shape
    ws = create(stack, kind=kind, resources=least, software=Software(setup_script="true\n")).workspace
    assert ws.state == W.STATE_RUNNING
    assert ws.spec.resources.memory_bytes == least.memory_bytes
    assert run(stack, ws, ["true"])[0] == 0
    assert run(stack, ws, ["sh", "-c", "echo ok"])[:2] == (0, "ok\n")


def test_the_largest_environment_admitted_leaves_an_exec_room(stack):
    env = {f"V{i:03d}" + "N" * 124: "x" * validation.MAX_ENV_VALUE for i in range(validation.MAX_ENV)}
    ws = create(stack, software=Software(environment=env)).workspace
    argv = ["sh", "-c", 'test ${#V000' + "N" * 124 + '} -eq ' + str(validation.MAX_ENV_VALUE), "x" * 4096]
    assert run(stack, ws, argv, env={"OWN": "y" * 4096})[0] == 0


def _nothing_left(stack):
    assert stack.accounts() == []
    everything = repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        states=[s for s in W.State.values() if s]), timeout=10)
    assert list(everything.workspaces) == []


F = "workspace.spec.software."
R = "workspace.spec.resources."


@pytest.mark.parametrize("spec,fields", [
    (dict(software=Software(environment={"VWSENV_0": "x"})), [F + "environment[VWSENV_0]"]),
    (dict(software=Software(environment={f"V{i}": "x" for i in range(validation.MAX_ENV + 1)})),
     [F + "environment"]),
    (dict(software=Software(environment={"BIG": "x" * (validation.MAX_ENV_VALUE + 1)})), [F + "environment[BIG]"]),
    (dict(software=Software(files=[File(path="d/" + "n" * 256, content=b"x")])), [F + "files[0].path"]),
    (dict(software=Software(files=[File(path="a/b", content=b"x"), File(path="a", content=b"x")])),
     [F + "files[1].path"]),
    (dict(software=Software(files=[File(path=f"f{i}", content=b"x" * (4 * MiB)) for i in range(8)]),
          resources=workspace_pb2.ResourceAllocation(disk_bytes=16 * MiB)), [F + "files"]),
    (dict(resources=workspace_pb2.ResourceAllocation(memory_bytes=9)), [R + "memory_bytes"]),
    (dict(resources=workspace_pb2.ResourceAllocation(memory_bytes=64 * 1000)), [R + "memory_bytes"]),
    (dict(resources=workspace_pb2.ResourceAllocation(max_processes=1, cpu_millis=1)),
     [R + "max_processes", R + "cpu_millis"]),
])
def test_what_a_manager_could_not_make_is_refused_at_admission(stack, spec, fields):
    with pytest.raises(grpc.RpcError) as e:
        clients.factory(stack.factory.address).CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
            request_id=str(uuid.uuid4()), workspace=W(spec=Spec(kind=Spec.KIND_UNIX_ACCOUNT, **spec))), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert sorted(violations(e.value)) == sorted(fields)
    _nothing_left(stack)



def test_a_virtual_machine_at_its_floors_runs_true(stack, guest):
    add_image(stack, guest)
    least = next(k.min_resources for k in clients.factory(stack.factory.address).GetSiteInfo(
        factory_pb2.GetSiteInfoRequest(), timeout=10).kinds if k.kind == Spec.KIND_VIRTUAL_MACHINE)
    assert least.memory_bytes == 128 * MiB and least.cpu_millis == 1000
    ws = create_vm(stack, memory_bytes=least.memory_bytes, cpu_millis=least.cpu_millis, disk_bytes=least.disk_bytes,
                   network_bits_per_second=least.network_bits_per_second)
    assert run(stack, ws, ["true"])[0] == 0
