"""SANDBOX workspaces through the whole stack: the factory places them on a manager that offers
accounts and sandboxes side by side (the kind router), and each Exec enters the same sandbox."""
from __future__ import annotations

from tests.integration.stack import wait_until
from tests.integration.test_workspaces import create, get, repo, run
from vws.v1 import repository_pb2, workspace_pb2

W = workspace_pb2.Workspace


def test_sandbox_beside_account_on_one_manager(stack):
    account = create(stack).workspace
    sandbox = create(stack, kind=workspace_pb2.WorkspaceSpec.KIND_SANDBOX,
                     resources=workspace_pb2.ResourceAllocation(memory_bytes=128 * 2 ** 20, max_processes=64)).workspace
    assert sandbox.state == W.STATE_RUNNING and sandbox.spec.kind == workspace_pb2.WorkspaceSpec.KIND_SANDBOX
    wid = sandbox.name.split("/", 1)[1]
    code, out, err = run(stack, sandbox, ["sh", "-c", "hostname; echo $$ > /tmp/mark; ps -e -o pid= | wc -l"])
    assert code == 0, err
    hostname, processes = out.split()[:2]
    assert hostname == wid and int(processes) < 10  # its own PID namespace: only its own processes
    assert run(stack, sandbox, ["cat", "/tmp/mark"])[0] == 0  # the next Exec enters the same sandbox
    assert run(stack, account, ["test", "-e", "/tmp/mark"])[0] == 1  # its /tmp is its own
    shown = get(stack, sandbox.name)
    assert shown.enforcement.memory_limit_bytes == 128 * 2 ** 20 and shown.enforcement.max_processes == 64
    for ws in (sandbox, account):
        repo(stack).DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name), timeout=60)
    wait_until(lambda: all(get(stack, w.name).state == W.STATE_TERMINATED for w in (sandbox, account)),
               what="both TERMINATED")
    assert stack.accounts() == []
