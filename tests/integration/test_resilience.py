"""Nothing lost: kill -9 of any service, managers that vanish, two managers on one machine."""
from __future__ import annotations

import pathlib
import pwd
import signal
import subprocess
import threading
import time
import uuid

import grpc
import pytest

from tests.integration.stack import wait_until
from tests.integration.test_workspaces import create, get, repo, run
from vws.common import clients
from vws.v1 import access_pb2, manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace


def managers(stack):
    return {m.name: m for m in repo(stack).ListManagers(repository_pb2.ListManagersRequest(), timeout=10).managers}


def test_two_managers_share_the_load_and_a_silent_one_gets_nothing_new(stack_factory):
    stack = stack_factory(managers=2)
    m0, m1 = stack.manager_name("m0"), stack.manager_name("m1")
    placed = [create(stack).workspace.endpoint.manager for _ in range(4)]
    assert placed.count(m0) == 2 and placed.count(m1) == 2
    # m1 stops heartbeating (frozen, as a hung host would be): it becomes UNREACHABLE and gets nothing new
    stack.managers["m1"].kill(signal.SIGSTOP)
    wait_until(lambda: managers(stack)[m1].state == workspace_pb2.Manager.STATE_UNREACHABLE, timeout=10,
               what="m1 UNREACHABLE")
    assert all(create(stack).workspace.endpoint.manager == m0 for _ in range(3))
    stack.managers["m1"].kill(signal.SIGCONT)
    wait_until(lambda: managers(stack)[m1].state == workspace_pb2.Manager.STATE_AVAILABLE, timeout=10,
               what="m1 AVAILABLE again")


def test_kill_9_of_the_repository_loses_nothing_and_changes_made_meanwhile_arrive(stack):
    ws = create(stack).workspace
    stack.repository.kill(signal.SIGKILL)
    m = clients.manager(ws.endpoint.manager_address)
    # the manager still works while the repository is away, and remembers what to tell it
    assert m.PauseWorkspace(manager_pb2.PauseWorkspaceRequest(name=ws.name), timeout=10).workspace.state == W.STATE_PAUSED
    # back on the same address and data directory, as a restarted service would be
    stack.repository.flags = ["--listen", stack.repository.address] + stack.repository.flags[2:]
    stack.repository.start()
    wait_until(lambda: get(stack, ws.name).state == W.STATE_PAUSED, timeout=15, what="the PAUSED report")


def test_kill_9_of_a_manager_before_its_audit_entry_reached_the_repository_loses_no_entry(stack):
    """The entry waits in the manager's journal while the repository is away; the manager dies
    before shipping it, and ships it after its restart."""
    ws = create(stack).workspace
    stack.repository.kill(signal.SIGKILL)
    m = clients.manager(ws.endpoint.manager_address)
    assert m.PauseWorkspace(manager_pb2.PauseWorkspaceRequest(name=ws.name), timeout=10).workspace.state == W.STATE_PAUSED
    manager = stack.managers["m0"]
    manager.kill(signal.SIGKILL)
    stack.repository.flags = ["--listen", stack.repository.address] + stack.repository.flags[2:]
    stack.repository.start()
    manager.flags = [f if f != "127.0.0.1:0" else manager.address for f in manager.flags]
    manager.start()

    def paused_entry():
        entries = clients.access(stack.repository.address).ListAuditEntries(
            access_pb2.ListAuditEntriesRequest(target=ws.name), timeout=10).entries
        return [e for e in entries if e.action == "ManagerService/PauseWorkspace" and e.outcome == "OK"]
    entry = wait_until(paused_entry, timeout=15, what="the PauseWorkspace audit entry")[0]
    assert entry.service == stack.manager_name("m0") and entry.identity == "/O=vws/OU=users/CN=admin"


def test_kill_9_of_a_manager_then_reconcile_at_start(stack):
    keep = create(stack).workspace
    vanish = create(stack).workspace
    manager = stack.managers["m0"]
    manager.kill(signal.SIGKILL)
    # behind its back: one account is removed, an orphan account appears that no workspace owns
    # 12: its home is the mount point of the workspace's own filesystem, which userdel cannot remove
    assert subprocess.run(["userdel", "-r", vanish.endpoint.host_identity], capture_output=True).returncode in (0, 12)
    manager_id = stack.manager_name("m0").split("/", 1)[1]
    orphan = f"{stack.prefix}m0-worphanorphan"[:32]
    subprocess.run(["useradd", "-m", "-c", f"vws/{manager_id}/worphanorpha", orphan], check=True)
    address = manager.address
    manager.flags = [f if f != "127.0.0.1:0" else address for f in manager.flags]
    manager.start()
    wait_until(lambda: get(stack, vanish.name).state == W.STATE_FAILED, timeout=15, what="vanished -> FAILED")
    assert "vanished" in get(stack, vanish.name).state_message
    with pytest.raises(KeyError):
        pwd.getpwnam(orphan)
    assert get(stack, keep.name).state == W.STATE_RUNNING
    assert run(stack, keep, ["id", "-un"])[1].strip() == keep.endpoint.host_identity
    # a FAILED workspace can still be destroyed
    repo(stack).DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=vanish.name), timeout=30)
    wait_until(lambda: get(stack, vanish.name).state == W.STATE_TERMINATED, what="TERMINATED")


def test_kill_9_of_the_factory_during_creates_leaves_every_record_whole(stack):
    """Creates run while the factory is killed at arbitrary moments; each request is retried
    with its id until it answers. Afterwards every request has exactly one workspace, each with
    exactly one account, and nothing else is on the host."""
    ids = [str(uuid.uuid4()) for _ in range(6)]
    results: dict[str, str] = {}
    failures: list[BaseException] = []

    def client():
        try:
            create_all()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    def create_all():
        for rid in ids:
            while True:
                try:
                    results[rid] = create(stack, rid).workspace.name
                    break
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                          grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
                        raise
    t = threading.Thread(target=client)
    address = stack.factory.address
    stack.factory.flags = [f if f != "127.0.0.1:0" else address for f in stack.factory.flags]
    t.start()
    for delay in (0.05, 0.15, 0.3):
        threading.Event().wait(delay)
        stack.factory.kill(signal.SIGKILL)
        stack.factory.start()
    t.join(timeout=120)
    assert not failures and not t.is_alive() and set(results) == set(ids)
    assert len(set(results.values())) == len(ids)
    everything = repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(
        states=[s for s in W.State.values() if s]), timeout=10).workspaces
    live = [w for w in everything if w.state != W.STATE_TERMINATED]
    assert sorted(w.name for w in live) == sorted(results.values())
    assert all(w.state == W.STATE_RUNNING for w in live)
    wait_until(lambda: len(stack.accounts()) == len(ids), timeout=15, what="one account per workspace")


def test_after_a_host_restart_the_manager_puts_limits_filesystems_and_sandboxes_back(stack):
    """A host restart takes the cgroups, the loop mounts and the sandbox inits, and keeps the
    accounts, the images and the manager's state. At its next start the manager restores them."""
    from tests.integration.stack import remove_cgroups
    from vws.manager.backends.host.disk import mounts
    from vws.manager.backends.sandbox.backend import reap_all_under
    account = create(stack, resources=workspace_pb2.ResourceAllocation(memory_bytes=96 * 2 ** 20,
                                                                       disk_bytes=64 * 2 ** 20)).workspace
    sandbox = create(stack, kind=workspace_pb2.WorkspaceSpec.KIND_SANDBOX,
                     resources=workspace_pb2.ResourceAllocation(disk_bytes=64 * 2 ** 20)).workspace
    for ws in (account, sandbox):
        assert run(stack, ws, ["sh", "-c", "echo kept > ~/data"])[0] == 0
    manager = stack.managers["m0"]
    manager.kill(signal.SIGKILL)
    # the "restart": every process, sandbox, mount and cgroup of the workspaces goes
    reap_all_under(stack.root)
    for ws in (account, sandbox):
        subprocess.run(["pkill", "-KILL", "-u", ws.endpoint.host_identity], capture_output=True)
    homes = {pwd.getpwnam(ws.endpoint.host_identity).pw_dir for ws in (account, sandbox)}
    for target, _, _ in mounts():
        if target in homes:
            subprocess.run(["umount", target], check=True)
    remove_cgroups(stack.manager_name("m0").split("/", 1)[1])
    address = manager.address
    manager.flags = [f if f != "127.0.0.1:0" else address for f in manager.flags]
    manager.start()

    def restored(ws):
        events = repo(stack).ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(parent=ws.name),
                                                 timeout=10).events
        return [e.message for e in events if "restored on the host" in e.message]
    for ws in (account, sandbox):
        (message,) = wait_until(lambda: restored(ws), timeout=20, what=f"{ws.name} restored")
        assert "limits" in message and "filesystem" in message
        assert get(stack, ws.name).state == W.STATE_RUNNING
        assert run(stack, ws, ["cat", "data"])[1] == "kept\n"  # its files came back with its filesystem
    assert "sandbox" in restored(sandbox)[0]
    assert run(stack, sandbox, ["hostname"])[1].strip() == sandbox.name.split("/", 1)[1]
    limit = pathlib.Path(f"/sys/fs/cgroup/memory/vws/{stack.manager_name('m0').split('/', 1)[1]}/"
                         f"{account.name.split('/', 1)[1]}/memory.limit_in_bytes")
    assert int(limit.read_text()) == 96 * 2 ** 20
    # a plain restart (nothing lost) restores nothing
    manager.kill(signal.SIGKILL)
    manager.start()
    wait_until(lambda: get(stack, account.name).state == W.STATE_RUNNING, what="manager back")
    time.sleep(1)
    assert len(restored(account)) == 1 and len(restored(sandbox)) == 1


def test_a_create_cut_short_by_a_manager_crash_is_deployed_again_by_its_retry(stack):
    """The manager dies mid-deploy (and the factory with it, so nothing removes the record); the
    manager undoes the deploy at its restart (FAILED). The retry with the same request_id
    deploys it again and answers with a working workspace, never OK with a FAILED one."""
    rid = str(uuid.uuid4())
    software = workspace_pb2.SoftwareConfiguration(setup_script="sleep 4")
    first: list = []
    t = threading.Thread(target=lambda: first.append(pytest.raises(grpc.RpcError, create, stack, rid,
                                                                    software=software)))
    t.start()
    wait_until(lambda: stack.accounts(), timeout=30, what="the deploy under way")
    for p in (stack.factory, stack.managers["m0"]):
        p.flags = [f if f != "127.0.0.1:0" else p.address for f in p.flags]
        p.kill(signal.SIGKILL)
    t.join(timeout=30)
    stack.managers["m0"].start()
    everything = lambda: repo(stack).ListWorkspaces(repository_pb2.ListWorkspacesRequest(  # noqa: E731
        states=[s for s in W.State.values() if s]), timeout=10).workspaces
    wait_until(lambda: [w.state for w in everything()] == [W.STATE_FAILED], timeout=30, what="undone: FAILED")
    stack.factory.start()
    again = create(stack, rid, software=software).workspace
    assert again.state == W.STATE_RUNNING and [w.name for w in everything()] == [again.name]
    assert run(stack, again, ["true"])[0] == 0
    assert stack.accounts() == [again.endpoint.host_identity]
