"""Migration between two real managers (issue 6), driven as a user drives it (`vws migrate`):
an account workspace with its files, a running virtual machine with its memory and disk, and
a migration whose restore fails on the destination, which leaves the workspace where it was,
as it was."""
from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import time

import pytest

from tests.integration.netns import Namespaces
from tests.integration.stack import Stack, wait_until
from tests.integration.test_vms import GUEST, add_image, create_vm, domains_of, virsh
from vws.common import clients
from vws.manager.transfer import SendOptions
from vws.native.copysum import CHUNK
from vws.v1 import factory_pb2, manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
MiB = 1024 ** 2


def create_account(stack, kind=workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT) -> W:
    spec = workspace_pb2.WorkspaceSpec(kind=kind, start_on_create=True,
                                       resources=workspace_pb2.ResourceAllocation(memory_bytes=128 * MiB))
    return clients.factory(stack.factory.address).CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
        request_id=f"r-{stack.tag}-{len(stack.accounts())}", workspace=W(spec=spec, owner="alice")),
        timeout=120).workspace


def run(ws: W, *argv: str) -> str:
    """A program's output in the workspace, through the manager holding it now."""
    def requests():
        yield manager_pb2.ExecRequest(name=ws.name, argv=list(argv), close_stdin=True)
    out, code = b"", None
    for msg in clients.manager(ws.endpoint.manager_address).Exec(requests(), timeout=120):
        if msg.WhichOneof("output") == "stdout":
            out += msg.stdout
        elif msg.WhichOneof("output") == "exit_status":
            code = msg.exit_status.code
    assert code == 0, (argv, out)
    return out.decode()


def get(stack, name: str) -> W:
    return clients.repository(stack.repository.address).GetWorkspace(
        repository_pb2.GetWorkspaceRequest(name=name), timeout=10).workspace


def events(stack, name: str):
    return clients.repository(stack.repository.address).ListWorkspaceEvents(
        repository_pb2.ListWorkspaceEventsRequest(parent=name, page_size=1000), timeout=10).events


def other(stack, ws: W) -> str:
    return next(stack.manager_name(n) for n in stack.managers if stack.manager_name(n) != ws.endpoint.manager)


def migrate(stack, ws: W, to: str, *extra: str) -> subprocess.CompletedProcess:
    return stack.cli("migrate", ws.name.split("/", 1)[1], "--to", to, *extra, timeout=600)


NEEDS_GUEST = pytest.mark.requires(not (GUEST / "vmlinuz").exists(),
                                   f"the test guest in {GUEST} (make setup builds it)")


def marked_guest(stack_factory) -> tuple[Stack, W, str, str]:
    """Two managers and a running guest on one of them with a mark in its memory (/tmp in the
    guest is in its RAM): the stack, the guest, the manager holding it and the other one."""
    stack = stack_factory(managers=2)
    add_image(stack, GUEST)
    ws = create_vm(stack)
    source, dest = ws.endpoint.manager, other(stack, ws)
    run(ws, "sh", "-c", "echo in-memory > /tmp/mark")
    return stack, ws, source, dest


def test_an_account_workspace_moves_with_its_files(stack_factory):
    stack = stack_factory(managers=2)
    ws = create_account(stack)
    source, dest = ws.endpoint.manager, other(stack, ws)
    run(ws, "sh", "-c", "mkdir -p data && echo kept > data/file && truncate -s 64M data/sparse && "
                        "head -c 3000000 /dev/urandom > data/random && sha256sum data/random > data/sum")
    before = get(stack, ws.name).endpoint.host_identity

    r = migrate(stack, ws, dest, "-o", "json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    assert result["source"] == source and result["destination"] == dest
    assert result["workspace"]["state"] == "STATE_RUNNING"
    assert int(result["total_bytes"]) > 3_000_000 and int(result["sent_bytes"]) < 8 * MiB  # the holes are not sent

    moved = get(stack, ws.name)
    assert moved.endpoint.manager == dest and moved.state == W.STATE_RUNNING
    assert moved.endpoint.host_identity != before
    assert run(moved, "cat", "data/file") == "kept\n"
    assert run(moved, "sha256sum", "-c", "data/sum").strip().endswith("OK")
    owner = run(moved, "stat", "-c", "%U", "data/random").strip()
    assert owner == moved.endpoint.host_identity
    assert run(moved, "du", "-k", "data/sparse").split()[0] == "0"  # still sparse
    assert before not in {p.pw_name for p in pwd.getpwall()}  # nothing left at the source
    migrated = [e for e in events(stack, ws.name) if e.type == workspace_pb2.WorkspaceEvent.TYPE_MIGRATED]
    assert len(migrated) == 2 and source in migrated[0].message and dest in migrated[0].message
    assert [e.state for e in events(stack, ws.name)][-3:] == [W.STATE_MIGRATING, W.STATE_MIGRATING, W.STATE_RUNNING]

    # and back: the human output names both ends and the figures
    back = migrate(stack, moved, source)
    assert back.returncode == 0, back.stderr.decode()
    assert f"on {source}" in back.stdout.decode() and "sent" in back.stdout.decode()
    assert run(get(stack, ws.name), "cat", "data/file") == "kept\n"


def test_a_paused_sandbox_moves_paused_with_its_files(stack_factory):
    stack = stack_factory(managers=2)
    ws = create_account(stack, workspace_pb2.WorkspaceSpec.KIND_SANDBOX)
    dest = other(stack, ws)
    run(ws, "sh", "-c", "echo boxed > inside")
    assert stack.cli("pause", ws.name.split("/", 1)[1]).returncode == 0
    r = migrate(stack, ws, dest)
    assert r.returncode == 0, r.stderr.decode()
    moved = get(stack, ws.name)
    assert moved.endpoint.manager == dest and moved.state == W.STATE_PAUSED
    assert stack.cli("resume", ws.name.split("/", 1)[1]).returncode == 0
    moved = get(stack, ws.name)
    assert run(moved, "cat", "inside") == "boxed\n"
    assert run(moved, "hostname").strip() != os.uname().nodename  # still in a sandbox of its own


def test_a_failed_restore_leaves_it_where_it_was_as_it_was(stack_factory):
    stack = stack_factory(managers=2)
    ws = create_account(stack)
    source, dest = ws.endpoint.manager, other(stack, ws)
    run(ws, "sh", "-c", "echo still-here > note")
    # The destination cannot make the account: one of that name exists on the host already.
    dest_id = dest.split("/", 1)[1].removeprefix(f"t{stack.tag}-")
    taken = f"{stack.prefix}{dest_id}-{ws.name.split('/', 1)[1]}"
    subprocess.run(["useradd", "--no-create-home", taken], check=True)
    try:
        r = migrate(stack, ws, dest)
        assert r.returncode != 0
        err = r.stderr.decode()
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and taken in err
    finally:
        subprocess.run(["userdel", taken], capture_output=True)
    back = get(stack, ws.name)
    assert back.endpoint.manager == source and back.state == W.STATE_RUNNING
    assert run(back, "cat", "note") == "still-here\n"
    last = events(stack, ws.name)[-1]
    assert last.type == workspace_pb2.WorkspaceEvent.TYPE_MIGRATED and "failed" in last.message
    assert taken in last.message
    # nothing of it on the destination: no partial transfer, no migration on record
    dest_dir = stack.managers[dest_id].data_dir / "manager"
    assert not any((dest_dir / "transfer").rglob("*.data"))


@NEEDS_GUEST
def test_a_running_guest_moves_with_its_memory_and_comes_back(stack_factory):
    stack, ws, source, dest = marked_guest(stack_factory)
    boot_id = run(ws, "cat", "/proc/sys/kernel/random/boot_id")

    r = migrate(stack, ws, dest, "-o", "json")
    assert r.returncode == 0, r.stderr.decode()
    result = json.loads(r.stdout)
    moved = get(stack, ws.name)
    assert moved.endpoint.manager == dest and moved.state == W.STATE_RUNNING
    assert run(moved, "cat", "/tmp/mark") == "in-memory\n"
    assert run(moved, "cat", "/proc/sys/kernel/random/boot_id") == boot_id  # not rebooted
    # the same host here: both managers share one image cache? no: each has its own, so the
    # image travelled once; going back, the source's cache has it and nothing of it is sent
    assert int(result["sent_bytes"]) > 0
    back = migrate(stack, moved, source, "-o", "json")
    assert back.returncode == 0, back.stderr.decode()
    again = json.loads(back.stdout)
    assert int(again["reused_bytes"]) >= 17 * MiB
    home = get(stack, ws.name)
    assert home.endpoint.manager == source and run(home, "cat", "/tmp/mark") == "in-memory\n"
    assert len(domains_of(stack)) == 1
    assert virsh("domstate", home.endpoint.host_identity).stdout.strip() == "running"


@NEEDS_GUEST
def test_a_source_killed_mid_migration_puts_the_guest_back_at_its_next_start(stack_factory):
    stack, ws, source, dest = marked_guest(stack_factory)
    name = next(n for n in stack.managers if stack.manager_name(n) == source)
    cli = subprocess.Popen([*stack.cli_argv("migrate", ws.name.split("/", 1)[1], "--to", dest)],
                           env=stack.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until(lambda: get(stack, ws.name).state == W.STATE_MIGRATING, timeout=60, interval=0.02, what="MIGRATING")
    stack.managers[name].kill(signal.SIGKILL)
    _, err = cli.communicate(timeout=120)
    assert cli.returncode != 0 and b"Traceback" not in err
    stack.managers[name].start()
    wait_until(lambda: get(stack, ws.name).state == W.STATE_RUNNING, timeout=120, what="RUNNING again")
    back = get(stack, ws.name)
    assert back.endpoint.manager == source
    back.endpoint.manager_address = stack.managers[name].address  # restarted on another port
    assert run(back, "cat", "/tmp/mark") == "in-memory\n"
    last = events(stack, ws.name)[-1]
    assert last.type == workspace_pb2.WorkspaceEvent.TYPE_MIGRATED and "restarted" in last.message
    dest_dir = stack.managers[dest.split("/", 1)[1].removeprefix(f"t{stack.tag}-")].data_dir / "manager"
    wait_until(lambda: not any((dest_dir / "transfer").rglob("*.data")), what="the partial copy gone")
    assert len(domains_of(stack)) == 1


# --------------------------------------------------------------------------- two hosts
class Lan(Namespaces):
    """Two network namespaces, each joined by a veth pair to a bridge in the host's namespace,
    which serves the repository and the factory: a manager in each namespace has its own
    address, and what one sends the other crosses both pairs and the bridge. Removed on exit."""

    def __init__(self):
        tag = secrets.token_hex(3)
        self.tag = tag
        self.bridge = f"vmb{tag}"
        self.ns = {side: f"vwsmig-{tag}-{side}" for side in "ab"}
        self.outer = {side: f"vmo{tag}{side}" for side in "ab"}  # in the host's namespace, on the bridge
        self.inner = {side: f"vmi{tag}{side}" for side in "ab"}
        net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
        self.host_addr = f"{net}.254"
        self.addr = {"a": f"{net}.1", "b": f"{net}.2"}

    def build(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for side in "ab":
            ip("netns", "add", self.ns[side])
            ip("link", "add", self.outer[side], "type", "veth", "peer", "name", self.inner[side],
               "netns", self.ns[side])
            ip("link", "set", self.outer[side], "master", self.bridge, "up")
            for args in (("addr", "add", f"{self.addr[side]}/24", "dev", self.inner[side]),
                         ("link", "set", self.inner[side], "up"), ("link", "set", "lo", "up")):
                ip("-n", self.ns[side], *args)

    def close(self) -> None:
        super().close()
        ip("link", "del", self.bridge, check=False)

    def link(self, side: str, up: bool) -> None:
        """Pulls (or plugs back) the cable of side's host."""
        ip("link", "set", self.outer[side], "up" if up else "down")

    def shape(self, side: str, rate: str) -> None:
        """What side's host sends goes at most at rate (tbf on its end of the pair)."""
        ip("-n", self.ns[side], "qdisc", "replace", "dev", self.inner[side], "root", "tbf", "rate", rate,
           "burst", "1mbit", "latency", "400ms", tc=True)


def ip(*args: str, check: bool = True, tc: bool = False) -> subprocess.CompletedProcess:
    argv = ["tc" if tc else "ip", *args]  # tc takes -n NS like ip
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


@pytest.fixture
def lan_stack(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("makes network namespaces and accounts: run as root (CI does)", pytrace=False)
    with Lan() as lan:
        stack = Stack(tmp_path / "lan", host=lan.host_addr)
        try:
            stack.start(0)
            for side in "ab":
                stack.add_manager(side, host=lan.addr[side], prefix=lan.prefix(side), sandboxes="false",
                                  vms="false", transfer_stall_timeout="2s", transfer_give_up_after="120s")
            yield lan, stack
        finally:
            stack.close()


def create_on(stack, side: str) -> W:
    """An account workspace on the manager of side (the other one is made full for a moment)."""
    ws = create_account(stack)
    if ws.endpoint.manager != stack.manager_name(side):
        r = stack.cli("migrate", ws.name.split("/", 1)[1], "--to", stack.manager_name(side), timeout=300)
        assert r.returncode == 0, r.stderr.decode()
        ws = get(stack, ws.name)
    return ws


def test_across_two_hosts_a_cut_link_resumes_from_the_last_verified_chunk(lan_stack):
    lan, stack = lan_stack
    ws = create_on(stack, "a")
    run(ws, "sh", "-c", "head -c 200000000 /dev/urandom > big && sha256sum big > big.sum")
    lan.shape("a", "400mbit")  # about 4 s for the file: time to pull the cable half-way
    cli = subprocess.Popen(stack.cli_argv("migrate", ws.name.split("/", 1)[1], "--to", stack.manager_name("b"),
                                          "-o", "json"), env=stack.cli_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    wait_until(lambda: get(stack, ws.name).progress.done_bytes > 60_000_000, timeout=60, interval=0.05,
               what="a third sent")
    lan.link("a", False)
    time.sleep(4)  # longer than the stall timeout (2 s): the sender gives the stream up and retries
    done_while_cut = get(stack, ws.name).progress.done_bytes
    lan.link("a", True)
    out, err = cli.communicate(timeout=300)
    assert cli.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["resumes"] >= 1
    # from the last verified chunk: only the chunks in flight when the link went down go again
    window = (SendOptions.chunks_in_flight + SendOptions.streams) * CHUNK
    assert int(result["total_bytes"]) < int(result["sent_bytes"]) <= int(result["total_bytes"]) + window
    assert done_while_cut < int(result["total_bytes"])
    moved = get(stack, ws.name)
    assert moved.endpoint.manager == stack.manager_name("b") and moved.endpoint.manager_address.startswith(
        lan.addr["b"])
    assert run(moved, "sha256sum", "-c", "big.sum").strip().endswith("OK")


def test_across_two_hosts_a_failed_restore_rolls_back(lan_stack):
    lan, stack = lan_stack
    ws = create_on(stack, "a")
    run(ws, "sh", "-c", "echo still-here > note")
    taken = f"{stack.prefix}b-{ws.name.split('/', 1)[1]}"
    subprocess.run(["useradd", "--no-create-home", taken], check=True)
    try:
        r = migrate(stack, ws, stack.manager_name("b"))
    finally:
        subprocess.run(["userdel", taken], capture_output=True)
    assert r.returncode != 0 and taken in r.stderr.decode()
    back = get(stack, ws.name)
    assert back.endpoint.manager == stack.manager_name("a") and back.state == W.STATE_RUNNING
    assert run(back, "cat", "note") == "still-here\n"
    assert "failed" in events(stack, ws.name)[-1].message
    assert not any((stack.managers["b"].data_dir / "manager" / "transfer").rglob("*.data"))
