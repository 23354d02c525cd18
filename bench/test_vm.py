"""Virtual-machine workspaces, each figure beside its anchor in the same run:

- create until the guest agent answers (image already cached), through the whole stack, beside
  a bare `qemu-system-x86_64` boot of the same guest to userspace (bench/guest_boot.py).
  Goal: p50 <= 4 s under TCG.
- ten workspaces booted from one disk image: the disk they take (the cached image plus ten
  copy-on-write overlays, allocated blocks) beside the image's own size. Goal: <= 1.1x.
"""
from __future__ import annotations

import statistics
import time
import uuid

import grpc
import pytest

from bench.conftest import median
from bench.guest_boot import bare_qemu_boot_seconds
from tests.integration.test_vms import GUEST, add_image, create_vm
from vws.common import clients
from vws.v1 import manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
ROUNDS = 8
TEN = 10


def _until_agent_answers(stack, ws) -> None:
    """Exec `true` in the guest; the manager waits for the guest agent (up to its timeout)."""
    def requests():
        yield manager_pb2.ExecRequest(name=ws.name, argv=["true"], close_stdin=True)
    for msg in clients.manager(ws.endpoint.manager_address).Exec(requests(), timeout=120):
        if msg.WhichOneof("output") == "exit_status":
            assert msg.exit_status.code == 0


def _destroy(stack, names) -> None:
    repo = clients.repository(stack.repository.address)
    for name in names:
        repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=name), timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=n), timeout=10).workspace.state
                  for n in names]
        if all(s == W.STATE_TERMINATED for s in states):
            return
        time.sleep(0.2)


def test_vm_create_until_agent_answers(benchmark, stack_factory, report):
    if not (GUEST / "vmlinuz").exists():
        pytest.fail(f"no test guest in {GUEST}: run make setup", pytrace=False)
    bare = [bare_qemu_boot_seconds(GUEST) for _ in range(5)]
    stack = stack_factory()
    add_image(stack, GUEST)
    _destroy(stack, [create_vm(stack).name])  # the first create propagates the image into the cache
    samples: list[float] = []

    def once():
        t0 = time.perf_counter()
        ws = create_vm(stack)
        _until_agent_answers(stack, ws)
        samples.append(time.perf_counter() - t0)
        _destroy(stack, [ws.name])
    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    report.add_samples("vm create", samples)
    p50, p99 = report.pct("vm create", 50), report.pct("vm create", 99)
    anchor = median(bare)
    report.row("VM create until the guest agent answers (cached image, TCG), p50 / p99",
               f"{p50:.2f} / {p99:.2f} s", f"bare qemu-system-x86_64 boot to userspace {anchor:.2f} s",
               f"{p50 / anchor:.2f}x", "p50 <= 4 s: " + ("met" if p50 <= 4 else "NOT met"))


def _allocated(path) -> int:
    return path.stat().st_blocks * 512


def test_ten_workspaces_from_one_image(benchmark, stack_factory, report):
    if not (GUEST / "disk.qcow2").exists():
        pytest.fail(f"no disk image in {GUEST}: run make setup", pytrace=False)
    stack = stack_factory()
    image = add_image(stack, GUEST, "busybox-disk", disk=True)
    image_bytes = (GUEST / "disk.qcow2").stat().st_size
    names = []

    def ten():
        for _ in range(TEN):
            ws = create_vm(stack, "busybox-disk", disk_bytes=512 * 1024 ** 2)
            _until_agent_answers(stack, ws)  # booted, root filesystem mounted
            names.append(ws.name)
    benchmark.pedantic(ten, rounds=1, iterations=1)
    vm_root = stack.root / "manager-m0" / "manager" / "vm"
    cache = sum(_allocated(p) for p in (vm_root / "cache").iterdir())
    overlays = [_allocated(p) for p in (vm_root / "workspaces").glob("*/overlay.qcow2")]
    assert len(overlays) == TEN
    total = cache + sum(overlays)
    _destroy(stack, names)
    ratio = total / image_bytes
    report.row(f"{TEN} running VM workspaces from one disk image: disk taken (cache + overlays)",
               f"{total / 2**20:.1f} MiB (overlays {statistics.median(overlays) / 2**10:.0f} KiB each)",
               f"the image {image_bytes / 2**20:.1f} MiB", f"{ratio:.2f}x",
               "<= 1.1x: " + ("met" if ratio <= 1.1 else "NOT met"))
    assert image.name == "images/busybox-disk"
