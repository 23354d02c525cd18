"""Manager-to-manager transfer between two hosts: a real manager in one network namespace,
the sender in another, joined by a veth pair, so every byte crosses an interface. Full,
delta (an earlier copy, a base image in the cache), sparse, a corrupt chunk, the link cut
mid-transfer and resumed, an abort. No timings here (bench/test_transfer.py has them)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from blake3 import blake3

from tests.integration.netns import Hosts, final_line
from tests.unit.test_copysum import allocated, same_content
from vws.native import copysum

MiB = 1 << 20
CHUNK = copysum.CHUNK
needs_tools = pytest.mark.requires(not (shutil.which("ip") and shutil.which("nsenter") and shutil.which("tc")),
                                   "ip, nsenter and tc are needed (iproute2, util-linux: make setup)")
pytestmark = needs_tools


def random_file(path, size: int, seed: int):
    with open(path, "wb") as f:
        for i, off in enumerate(range(0, size, 64 * MiB)):
            f.write(blake3(f"{seed}/{i}".encode()).digest(length=min(64 * MiB, size - off)))
    return path


@pytest.fixture
def hosts():
    with Hosts() as h:
        yield h


@pytest.fixture
def receiver(hosts, tmp_path):
    return hosts.start_manager(tmp_path / "receiver")


def received(manager, transfer_id: str):
    """Where the receiving manager keeps a completed transfer (its store's index)."""
    files = json.loads((manager.transfer_dir / "files.json").read_text())
    return files[transfer_id]


def send(hosts, receiver, path, transfer_id, *options):
    out = hosts.send(receiver.address, path, transfer_id, *options)
    assert "result" in out, f"{out}\n{receiver.log()}"
    return out["result"]


def test_a_full_transfer_arrives_verified(hosts, receiver, tmp_path):
    src = random_file(tmp_path / "disk", 10 * CHUNK + 12345, 1)
    want = copysum.digest_file(src).digest
    r = send(hosts, receiver, src, "workspaces/w1/disk")
    assert r["digest"] == want
    assert (r["bytes_total"], r["bytes_sent"], r["chunks_sent"], r["resumes"]) == (src.stat().st_size,
                                                                                 src.stat().st_size, 11, 0)
    done = received(receiver, "workspaces/w1/disk")
    assert done["digest"] == want and not done["taken"]
    assert same_content(src, done["path"])
    assert list((receiver.transfer_dir / "partial").iterdir()) == []
    # Sending it again completes at once: the receiver has every chunk.
    again = send(hosts, receiver, src, "workspaces/w1/disk")
    assert (again["digest"], again["bytes_sent"]) == (want, 0)


def test_after_a_few_chunks_change_only_those_are_sent(hosts, receiver, tmp_path):
    old = random_file(tmp_path / "v1", 32 * CHUNK, 2)
    send(hosts, receiver, old, "workspaces/w2/disk@1")
    new = tmp_path / "v2"
    shutil.copy(old, new)
    with open(new, "r+b") as f:
        for k in (3, 17, 31):
            f.seek(k * CHUNK + 1000)
            f.write(b"changed" * 100)
    r = send(hosts, receiver, new, "workspaces/w2/disk@2", "--candidate", "workspaces/w2/disk@1")
    assert r["digest"] == copysum.digest_file(new).digest
    # 29 chunks copied there whole, 3 built on the earlier copy with the one 64 KiB block written.
    assert (r["chunks_sent"], r["bytes_sent"], r["bytes_reused"]) == (3, 3 * 65536, 32 * CHUNK - 3 * 65536)
    assert same_content(new, received(receiver, "workspaces/w2/disk@2")["path"])


def test_after_small_writes_all_over_an_earlier_copy_only_the_blocks_written_are_sent(hosts, receiver, tmp_path):
    old = random_file(tmp_path / "v1", 16 * CHUNK, 9)
    send(hosts, receiver, old, "workspaces/w8/disk@1")
    new = tmp_path / "v2"
    shutil.copy(old, new)
    with open(new, "r+b") as f:  # 4 KiB in every chunk: no chunk is as it was
        for k in range(16):
            f.seek(k * CHUNK + (k * 7 % 64) * 65536 + 100)
            f.write(b"w" * 4096)
    r = send(hosts, receiver, new, "workspaces/w8/disk@2", "--candidate", "workspaces/w8/disk@1")
    assert r["digest"] == copysum.digest_file(new).digest
    assert r["chunks_sent"] == 16 and r["bytes_sent"] <= 16 * 2 * 65536  # the 64 KiB blocks written (or two)
    assert r["bytes_sent"] + r["bytes_reused"] == 16 * CHUNK
    assert same_content(new, received(receiver, "workspaces/w8/disk@2")["path"])


def test_chunks_of_a_base_image_in_the_receivers_cache_are_not_sent(hosts, receiver, tmp_path):
    base = random_file(tmp_path / "base", 16 * CHUNK, 3)
    digest = copysum.digest_file(base).digest
    cache = receiver.data_dir / "manager" / "vm" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(base, cache / digest.partition(":")[2])  # as the image cache keeps it
    disk = tmp_path / "disk"  # the base with a few chunks of its own and a longer tail
    with open(disk, "wb") as f:
        f.write(base.read_bytes()[:12 * CHUNK] + blake3(b"own").digest(length=6 * CHUNK))
    r = send(hosts, receiver, disk, "workspaces/w3/disk", "--candidate", digest)
    assert r["digest"] == copysum.digest_file(disk).digest
    assert (r["bytes_sent"], r["bytes_reused"]) == (6 * CHUNK, 12 * CHUNK)
    assert same_content(disk, received(receiver, "workspaces/w3/disk")["path"])


def test_a_sparse_file_stays_sparse_and_only_its_data_is_sent(hosts, receiver, tmp_path):
    src = tmp_path / "sparse"
    size = 64 * CHUNK + 777
    extents = [(5 * CHUNK, blake3(b"a").digest(length=CHUNK)),            # a whole chunk
               (20 * CHUNK - 8192, blake3(b"b").digest(length=16384)),    # straddling two chunks
               (40 * CHUNK + 65536, blake3(b"c").digest(length=4096))]    # inside a chunk
    with open(src, "wb") as f:
        f.truncate(size)
        for off, data in extents:
            f.seek(off)
            f.write(data)
    os.sync()
    if allocated(src) >= size:
        pytest.fail(f"the filesystem of {src} keeps no holes; run the tests on one that does", pytrace=False)
    data_bytes = sum(len(d) for _, d in extents)
    r = send(hosts, receiver, src, "workspaces/w4/disk")
    assert r["digest"] == copysum.digest_file(src).digest
    assert data_bytes <= r["bytes_sent"] <= allocated(src)
    assert r["chunks_sent"] == 4 and r["bytes_zero"] == size - 4 * CHUNK
    path = received(receiver, "workspaces/w4/disk")["path"]
    assert same_content(src, path) and os.stat(path).st_size == size
    os.sync()
    assert allocated(path) <= allocated(src)


def test_a_corrupt_chunk_is_refused_and_not_kept(hosts, receiver, tmp_path):
    src = random_file(tmp_path / "disk", 3 * CHUNK, 5)
    err = hosts.tool("corrupt", receiver.address, str(src), "workspaces/w5/disk")["error"]
    assert err["code"] == "DATA_LOSS" and "chunk 0" in err["message"] and "does not match" in err["message"]
    journal = list((receiver.transfer_dir / "partial").glob("*.journal"))
    assert len(journal) == 1 and journal[0].read_bytes() == b""  # nothing was recorded for it
    # The transfer goes on: the real chunks complete it.
    r = send(hosts, receiver, src, "workspaces/w5/disk")
    assert r["digest"] == copysum.digest_file(src).digest and r["chunks_sent"] == 3


def test_the_link_cut_mid_transfer_resumes_from_the_last_verified_chunk(hosts, receiver, tmp_path):
    size = 48 * CHUNK
    src = random_file(tmp_path / "disk", size, 6)
    hosts.shape("300mbit")  # about 5 s for the file: time to cut it half-way
    p = hosts.start_send(receiver.address, src, "workspaces/w6/disk", "--progress", "--stall-timeout", "2",
                         "--give-up-after", "120")
    cut = False
    lines = []
    for line in p.stdout:
        lines.append(line)
        event = json.loads(line)
        if not cut and "progress" in event and event["progress"]["done"] >= size // 3:
            hosts.link(False)
            cut = True
            time.sleep(4)  # down long enough for the sender to notice (stall timeout 2 s)
            hosts.link(True)
    p.wait(timeout=120)
    out = final_line("".join(lines), p.stderr.read(), p.returncode)
    assert cut, "the transfer ended before a third of it was done: the link was never cut"
    assert "result" in out, f"{out}\n{receiver.log()}"
    r = out["result"]
    assert r["digest"] == copysum.digest_file(src).digest
    assert r["resumes"] >= 1
    # Chunks verified before the cut were not sent again; only what was in flight (queued,
    # in gRPC's and TCP's buffers) was.
    assert r["bytes_resumed"] >= CHUNK
    assert size <= r["bytes_sent"] <= size + 24 * CHUNK
    assert same_content(src, received(receiver, "workspaces/w6/disk")["path"])


def test_an_aborted_transfer_leaves_nothing_on_the_receiver(hosts, receiver, tmp_path):
    src = random_file(tmp_path / "disk", 24 * CHUNK, 7)
    hosts.shape("100mbit")
    p = hosts.start_send(receiver.address, src, "workspaces/w7/disk", "--progress")
    for line in p.stdout:
        if json.loads(line).get("progress", {}).get("done", 0) >= 4 * CHUNK:
            break
    p.kill()  # the sender dies mid-transfer
    p.wait()
    hosts.shape(None)
    partial = receiver.transfer_dir / "partial"
    assert any(partial.iterdir()), "no partial copy to abort"
    assert hosts.tool("abort", receiver.address, "workspaces/w7/disk") == {"result": {}}
    assert list(partial.iterdir()) == []
    assert list((receiver.transfer_dir / "done").iterdir()) == []


def test_the_manager_serves_the_transfer_service(hosts, receiver):
    assert hosts.tool("health", receiver.address) == {"result": {"status": 1}}  # SERVING


def test_a_receiver_that_is_gone_gives_a_clear_error_in_the_time_allowed(hosts, tmp_path):
    src = random_file(tmp_path / "disk", CHUNK, 8)
    out = hosts.send(f"{hosts.addr['b']}:1", src, "workspaces/w9/disk", "--give-up-after", "2")
    err = out["error"]
    assert (err["type"], err["code"]) == ("TransferFailed", "UNAVAILABLE")
    assert "gave up after" in err["message"] and "workspaces/w9/disk" in err["message"]


def test_nothing_is_left_of_the_hosts():
    with Hosts() as h:
        names = dict(h.ns)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names.values())
