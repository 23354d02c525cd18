"""The whole path with real servers and real accounts: create, exec, manage, expire, destroy."""
from __future__ import annotations

import os
import pwd
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.integration.stack import wait_until
from vws.common import clients
from vws.v1 import factory_pb2, manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
GiB = 1024 ** 3


def create(stack, request_id=None, **spec_fields) -> factory_pb2.CreateWorkspaceResponse:
    labels = spec_fields.pop("labels", {})
    spec_fields.setdefault("kind", workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT)
    spec = workspace_pb2.WorkspaceSpec(**spec_fields)
    return clients.factory(stack.factory.address).CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
        request_id=request_id or str(uuid.uuid4()), workspace=W(spec=spec, owner="alice", labels=labels)), timeout=60)


def repo(stack):
    return clients.repository(stack.repository.address)


def get(stack, name) -> W:
    return repo(stack).GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name), timeout=10).workspace


def run(stack, ws: W, argv, stdin: bytes | None = None, env=None, cwd=""):
    """Exec through the workspace's manager: (exit code, stdout, stderr)."""
    def requests():
        yield manager_pb2.ExecRequest(name=ws.name, argv=argv, environment=env or {}, working_directory=cwd,
                                      stdin=stdin or b"", close_stdin=True)
    out, err, code = b"", b"", None
    for msg in clients.manager(ws.endpoint.manager_address).Exec(requests(), timeout=60):
        which = msg.WhichOneof("output")
        if which == "stdout":
            out += msg.stdout
        elif which == "stderr":
            err += msg.stderr
        else:
            code = msg.exit_status.code
    return code, out.decode(), err.decode()


def violations(exc: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(exc)
    found = {}
    for d in status.details:
        br = error_details_pb2.BadRequest()
        if d.Unpack(br):
            found.update({v.field: v.description for v in br.field_violations})
    return found


def test_create_exec_manage_destroy_with_a_real_account(stack):
    r = create(stack, software=workspace_pb2.SoftwareConfiguration(
        environment={"PROJECT": "fft"},
        setup_script="echo configured-by-$(id -un) > ~/setup.out\nmkdir -p ~/data\n",
        files=[workspace_pb2.StagedFile(path="bin/hello.sh", content=b"#!/bin/sh\necho hello $1\n", mode=0o755)]),
        labels={"team": "physics"})
    ws = r.workspace
    assert ws.state == W.STATE_RUNNING and r.endpoint.manager == stack.manager_name("m0")
    account = ws.endpoint.host_identity
    assert account.startswith(stack.prefix) and len(account) <= 32
    entry = pwd.getpwnam(account)

    code, out, _ = run(stack, ws, ["sh", "-c", 'id -un; echo $HOME; pwd; echo $PROJECT; cat ~/setup.out; '
                                   'bin/hello.sh world; stat -c %U:%a bin/hello.sh'])
    assert code == 0
    assert out.split("\n")[:7] == [account, entry.pw_dir, entry.pw_dir, "fft", f"configured-by-{account}",
                                   "hello world", f"{account}:755"]
    assert run(stack, ws, ["cat"], stdin=b"through stdin")[1] == "through stdin"
    assert run(stack, ws, ["sh", "-c", "echo oops >&2; exit 7"])[::2] == (7, "oops\n")
    assert run(stack, ws, ["pwd"], cwd=f"{entry.pw_dir}/data")[1] == f"{entry.pw_dir}/data\n"

    # show and list see it; the label filter finds it
    assert get(stack, ws.name).endpoint.host_identity == account
    listed = repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(labels={"team": "physics"}), timeout=10)
    assert [w.name for w in listed.workspaces] == [ws.name]

    m = clients.manager(ws.endpoint.manager_address)
    assert m.PauseWorkspace(manager_pb2.PauseWorkspaceRequest(name=ws.name), timeout=10).workspace.state == W.STATE_PAUSED
    with pytest.raises(grpc.RpcError) as e:
        m.PauseWorkspace(manager_pb2.PauseWorkspaceRequest(name=ws.name), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "PAUSED" in e.value.details()
    assert m.ResumeWorkspace(manager_pb2.ResumeWorkspaceRequest(name=ws.name), timeout=10).workspace.state == W.STATE_RUNNING
    assert m.StopWorkspace(manager_pb2.StopWorkspaceRequest(name=ws.name), timeout=10).workspace.state == W.STATE_READY
    assert get(stack, ws.name).state == W.STATE_READY
    assert m.StartWorkspace(manager_pb2.StartWorkspaceRequest(name=ws.name), timeout=10).workspace.state == W.STATE_RUNNING

    # files in /tmp and a crontab belong to the account; destroy removes them with it
    run(stack, ws, ["sh", "-c", "echo x > /tmp/left-by-$(id -un); echo '0 0 * * * true' | crontab -"])
    uid = entry.pw_uid
    deleted = repo(stack).DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name), timeout=30).workspace
    assert deleted.state in (W.STATE_TERMINATING, W.STATE_TERMINATED)
    wait_until(lambda: get(stack, ws.name).state == W.STATE_TERMINATED, what="TERMINATED")
    with pytest.raises(KeyError):
        pwd.getpwnam(account)
    assert not pathlib_exists(f"/tmp/left-by-{account}")
    assert not pathlib_exists(f"/var/spool/cron/crontabs/{account}")
    assert subprocess.run(["pgrep", "-U", str(uid)], capture_output=True).returncode == 1
    events = repo(stack).ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(parent=ws.name), timeout=10)
    states = [W.State.Name(e.state) for e in events.events]
    assert states[0] == "STATE_PENDING" and states[-1] == "STATE_TERMINATED"
    assert "STATE_PAUSED" in states


def test_overlapping_destroys_both_answer_terminated(stack):
    """Two destroys of one workspace at once (a client's and the repository's expiry loop, or two
    clients) both answer TERMINATED, as does any later one: never NOT_FOUND."""
    ws = create(stack).workspace
    m = clients.manager(ws.endpoint.manager_address)
    together = threading.Barrier(2)

    def destroy(_):
        together.wait()
        return m.DestroyWorkspace(manager_pb2.DestroyWorkspaceRequest(name=ws.name, reason="overlap"),
                                  timeout=30).workspace.state
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(destroy, range(2))) == [W.STATE_TERMINATED] * 2
    assert m.DestroyWorkspace(manager_pb2.DestroyWorkspaceRequest(name=ws.name), timeout=30).workspace.state == \
        W.STATE_TERMINATED
    wait_until(lambda: get(stack, ws.name).state == W.STATE_TERMINATED, what="TERMINATED")
    assert stack.accounts() == []


def pathlib_exists(path: str) -> bool:
    import os
    return os.path.exists(path)


def test_same_request_id_returns_the_same_workspace(stack):
    rid = str(uuid.uuid4())
    a, b = create(stack, rid), create(stack, rid)
    assert a.workspace.name == b.workspace.name
    assert len(stack.accounts()) == 1


@pytest.mark.parametrize("spec,field", [
    (dict(resources=workspace_pb2.ResourceAllocation(memory_bytes=-1)), "workspace.spec.resources.memory_bytes"),
    (dict(resources=workspace_pb2.ResourceAllocation(disk_bytes=2 ** 62)), "workspace.spec.resources.disk_bytes"),
    (dict(kind=42), "workspace.spec.kind"),
    (dict(labels={"BAD": "x"}), "workspace.labels[BAD]"),
    (dict(software=workspace_pb2.SoftwareConfiguration(environment={"no-dash": "1"})),
     "workspace.spec.software.environment[no-dash]"),
])
def test_bad_input_names_the_field_and_leaves_nothing(stack, spec, field):
    kind = spec.pop("kind", workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT)
    labels = spec.pop("labels", {})
    with pytest.raises(grpc.RpcError) as e:
        clients.factory(stack.factory.address).CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
            request_id=str(uuid.uuid4()), workspace=W(spec=workspace_pb2.WorkspaceSpec(kind=kind, **spec),
                                                      labels=labels)), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(e.value)
    assert stack.accounts() == []
    everything = repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        states=[s for s in W.State.values() if s]), timeout=10)
    assert list(everything.workspaces) == []


def test_lifetime_over_the_maximum_and_unknown_names(stack):
    from google.protobuf import duration_pb2
    with pytest.raises(grpc.RpcError) as e:
        create(stack, lifetime=duration_pb2.Duration(seconds=365 * 86400))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "workspace.spec.lifetime" in violations(e.value)
    with pytest.raises(grpc.RpcError) as e:
        get(stack, "workspaces/wdoesnotexist")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        get(stack, "not-a-name")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "name" in violations(e.value)


def test_empty_argv_is_invalid(stack):
    ws = create(stack).workspace
    with pytest.raises(grpc.RpcError) as e:
        run(stack, ws, [])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "argv" in e.value.details()


def test_working_directory_cannot_leave_the_home(stack):
    ws = create(stack).workspace
    for outside in ("../../root", "/root"):
        with pytest.raises(grpc.RpcError) as e:
            run(stack, ws, ["pwd"], cwd=outside)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "working_directory" in e.value.details()
    home = pwd.getpwnam(ws.endpoint.host_identity).pw_dir
    assert run(stack, ws, ["pwd"], cwd=".")[:2] == (0, home + "\n")


def test_failing_setup_script_leaves_no_account_and_no_record(stack):
    with pytest.raises(grpc.RpcError) as e:
        create(stack, software=workspace_pb2.SoftwareConfiguration(setup_script="echo broken >&2; exit 3"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "broken" in e.value.details() and "3" in e.value.details()
    assert stack.accounts() == []
    everything = repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        states=[s for s in W.State.values() if s]), timeout=10)
    assert list(everything.workspaces) == []


def test_a_set_up_script_past_the_managers_limit_is_deadline_exceeded_and_leaves_nothing(stack_factory):
    import glob
    import time
    stack = stack_factory(setup_timeout="2s")
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        create(stack, software=workspace_pb2.SoftwareConfiguration(setup_script="echo started; sleep 30"))
    assert time.monotonic() - began < 20
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "setup_script" in e.value.details() and "2s" in e.value.details() and "started" in e.value.details()
    assert stack.accounts() == []
    everything = repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        states=[s for s in W.State.values() if s]), timeout=10)
    assert list(everything.workspaces) == []
    manager_id = stack.manager_name("m0").split("/", 1)[1]
    tops = glob.glob(f"/sys/fs/cgroup/*/vws/{manager_id}") + glob.glob(f"/sys/fs/cgroup/vws/{manager_id}")
    assert [d for top in tops for d in os.listdir(top) if d.startswith("w")] == []


def test_lifetime_ends_and_the_account_goes(stack):
    from google.protobuf import duration_pb2
    ws = create(stack, lifetime=duration_pb2.Duration(seconds=2)).workspace
    assert stack.accounts() == [ws.endpoint.host_identity]
    wait_until(lambda: get(stack, ws.name).state == W.STATE_TERMINATED, timeout=20, what="expiry")
    assert stack.accounts() == []
    assert "lifetime" in get(stack, ws.name).state_message or any(
        "lifetime" in e.message for e in repo(stack).ListWorkspaceEvents(
            repository_pb2.ListWorkspaceEventsRequest(parent=ws.name), timeout=10).events)


def test_termination_time_moves_within_the_maximum(stack):
    from google.protobuf import duration_pb2
    ws = create(stack, lifetime=duration_pb2.Duration(seconds=3600)).workspace
    moved = repo(stack).UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(
        name=ws.name, extend_by=duration_pb2.Duration(seconds=3600)), timeout=10).workspace
    assert moved.termination_time.seconds - ws.termination_time.seconds == 3600
    with pytest.raises(grpc.RpcError) as e:
        repo(stack).UpdateTerminationTime(repository_pb2.UpdateTerminationTimeRequest(
            name=ws.name, extend_by=duration_pb2.Duration(seconds=30 * 86400)), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and list(violations(e.value)) == ["extend_by"]


def test_site_info_and_a_vm_without_an_image(stack):
    info = clients.factory(stack.factory.address).GetSiteInfo(factory_pb2.GetSiteInfoRequest(), timeout=10)
    kinds = {k.kind: k for k in info.kinds}
    assert kinds[workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT].available
    assert info.repository_address == stack.repository.address and info.available_managers == 1
    assert kinds[workspace_pb2.WorkspaceSpec.KIND_SANDBOX].available
    with pytest.raises(grpc.RpcError) as e:
        clients.factory(stack.factory.address).CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
            request_id=str(uuid.uuid4()), workspace=W(spec=workspace_pb2.WorkspaceSpec(
                kind=workspace_pb2.WorkspaceSpec.KIND_VIRTUAL_MACHINE))), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "workspace.spec.software.image" in violations(e.value)


def test_pool_backend_leases_and_returns_accounts(stack_factory):
    stack = stack_factory(managers=1, backend="account-pool", pool_size=2)
    a = create(stack).workspace
    b = create(stack).workspace
    assert {a.endpoint.host_identity, b.endpoint.host_identity} == set(stack.accounts())
    run(stack, a, ["sh", "-c", "echo junk > ~/junk"])
    with pytest.raises(grpc.RpcError) as e:
        create(stack)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(e.value)
    qf = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(qf) for d in status.details) and qf.violations[0].subject == stack.manager_name("m0")
    repo(stack).DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=a.name), timeout=30)
    wait_until(lambda: get(stack, a.name).state == W.STATE_TERMINATED, what="TERMINATED")
    # the account is back in the pool (quarantine 0s here), its home restored from the skeleton
    c = wait_until(lambda: _try_create(stack), timeout=10, what="a pool account to come back")
    assert c.endpoint.host_identity == a.endpoint.host_identity
    assert run(stack, c, ["ls", "-A"])[1].split() == sorted(__import__("os").listdir("/etc/skel"))


def _try_create(stack):
    try:
        return create(stack).workspace
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        raise


def test_bandwidth_asked_of_an_account_is_refused_not_ignored(stack):
    with pytest.raises(grpc.RpcError) as e:
        create(stack, resources=workspace_pb2.ResourceAllocation(network_bits_per_second=10 ** 7))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sandbox" in e.value.details()
    assert stack.accounts() == []
