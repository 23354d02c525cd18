"""Manager-to-manager transfer (vws.manager.transfer) between two network namespaces joined by
a veth pair (tests/integration/netns.py), as the product does it: the sender in namespace a,
a real `vws manager` receiving in b, mutual TLS between them (each with a manager certificate
of the test session's site CA; off loopback plain text is refused). Beside it, in the same
run, rsync between the same namespaces.

(a) A full 1 GiB transfer (random, incompressible) against two anchors: `rsync -W` to an
    rsync daemon in b (plain text: the goal's literal anchor) and `rsync -W -e ssh` to an
    sshd in b (encrypted like the transfer: aes128-gcm, as TLS 1.3 gives gRPC AES-GCM here).
    Goal: at least 1.5x rsync -W's throughput; the ratio to each anchor is reported. Also the
    CPU time both ends took (the sender's less starting Python and its TLS client; rsync and
    ssh here, the daemon's or sshd's side there), since on this 2-core machine both ends and
    whatever else runs share the same cores. Beside them, the transport's own ceilings
    between the same namespaces: gRPC alone over the same mutual TLS (256 messages of 4 MiB
    on 2 streams, discarded: no file, no hash) and TCP alone (plain, one socket, 4 MiB writes
    and reads), each with both ends' CPU time: what the transfer takes beyond gRPC's is
    reading, hashing, verifying and writing.
(b) After 1% of the file's blocks change, the re-transfer, the receiver holding the old copy
    (an earlier transfer, given as candidate): bytes sent (goal <= 3% of the file) and time
    against rsync's delta transfer to the daemon (no -W, the destination holding the old
    copy; goal <= 1.2x). Two readings of "blocks": 4 MiB (the chunks: 3 of 256 changed, each
    by a 64 KiB write at a random place inside it) and 64 KiB (a qcow2 cluster: 164 of 16384,
    at random, so most chunks hold a change and go as CHUNK_SOURCE_BASE with only the blocks
    written).
(c) A 4 GiB sparse file holding 200 MiB (the layouts of bench/test_copy.py: 50 extents of
    4 MiB, chunk-aligned or each straddling two chunks): bytes sent (goal <= 1.05 x 200 MiB),
    also as counted on the interface, and the copy's allocation at the receiver.

Method. The sender runs in namespace a (tests/integration/netns.py send: its own process,
timed by send_file itself, so not counting Python's start), the receiver is the manager in b
with transfer_fsync off: like rsync (no --fsync), it leaves the data in page cache (with
fsync both are disk-bound here, about 5 s per GiB). Before each timed run, bench/test_copy.py's
_prepare: outputs deleted, sync, source read through, memory for the output touched (see
there why). send_file and its anchors take turns first. Medians of ROUNDS."""
from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time

import pytest

from bench.conftest import median
from bench.test_copy import BIG, CHUNK, MiB, _make_sparse, _prepare, _write_random
from tests.integration.netns import ROOT, Hosts
from tests.integration.stack import site_pki
from vws.native import copysum

GROUP = "transfer"
ROUNDS = 5
RSYNC_PORT = 8730
SSH_PORT = 8722
# The encrypted anchor's cipher: OpenSSH's fastest here (AES-NI), like the AES-GCM TLS 1.3 gives gRPC.
SSH_CIPHER = "aes128-gcm@openssh.com"


class Pair:
    """The two hosts; in b the manager receiving, rsync's daemon, and an sshd for `rsync -e
    ssh` (a throwaway host key, one authorised key)."""

    def __init__(self, root):
        self.root = root
        self.hosts = Hosts().__enter__()
        try:
            b = self.hosts.addr["b"]
            self.manager = self.hosts.start_manager(root / "receiver", "--transfer-fsync", "false")
            # The manager's own TLS files (start_manager wrote them), for the gRPC ceiling's two ends.
            self.tls = [str(site_pki().ca.cert), *(str(root / "receiver" / "tls" / n) for n in ("cert.pem", "key.pem"))]
            self.rsync_dir = root / "rsync"
            self.rsync_dir.mkdir()
            conf = root / "rsyncd.conf"
            conf.write_text(f"use chroot = no\npid file = {root}/rsyncd.pid\nlog file = {root}/rsyncd.log\n"
                            f"[m]\npath = {self.rsync_dir}\nread only = no\nuid = root\ngid = root\n")
            self.rsyncd = self.hosts.popen("b", "rsync", "--daemon", "--no-detach", f"--config={conf}",
                                           f"--port={RSYNC_PORT}", f"--address={b}")
            ssh = root / "ssh"
            ssh.mkdir(mode=0o700)
            for name in ("host", "client"):
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / name)], check=True)
            (ssh / "authorized_keys").write_text((ssh / "client.pub").read_text())
            (ssh / "sshd_config").write_text(
                f"ListenAddress {b}:{SSH_PORT}\nHostKey {ssh / 'host'}\nAuthorizedKeysFile {ssh / 'authorized_keys'}\n"
                f"PidFile {ssh / 'sshd.pid'}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nCompression no\n"
                f"Ciphers {SSH_CIPHER}\n")
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
            with open(ssh / "sshd.log", "ab") as log:
                self.sshd = self.hosts.popen("b", shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e",
                                             "-f", str(ssh / "sshd_config"), stderr=log)
            self.ssh = (f"ssh -i {ssh / 'client'} -p {SSH_PORT} -c {SSH_CIPHER} -o Compression=no -o BatchMode=yes "
                        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
            for what, argv, log in (("rsync daemon", ["rsync", self.url("")], root / "rsyncd.log"),
                                    ("sshd", [*self.ssh.split(), f"root@{b}", "true"], ssh / "sshd.log")):
                deadline = time.monotonic() + 20
                while self.hosts.exec("a", *argv, check=False).returncode != 0:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{what} did not answer in 20 s:\n{log.read_text()[-3000:]}")
                    time.sleep(0.1)
            # What starting the sender costs (Python, its TLS client, one call: a health check),
            # to take off its CPU time.
            startup = []
            for _ in range(3):
                c0 = _children_cpu()
                self.hosts.tool("health", self.manager.address)
                startup.append(_children_cpu() - c0)
            self.startup_cpu = median(startup)
        except BaseException:
            self.hosts.close()
            raise

    def url(self, name: str) -> str:
        return f"rsync://{self.hosts.addr['b']}:{RSYNC_PORT}/m/{name}"

    def ssh_url(self, name: str) -> str:
        return f"root@{self.hosts.addr['b']}:{self.rsync_dir / name}"

    def send(self, src, transfer_id: str, *options: str) -> dict:
        """send_file of src (after discarding an earlier transfer of that id); its result and
        the bytes namespace a's interface sent meanwhile."""
        self.hosts.tool("abort", self.manager.address, transfer_id)
        tx, sender, receiver = self.hosts.tx_bytes(), _children_cpu(), _cpu(self.manager.proc.pid)
        out = self.hosts.send(self.manager.address, src, transfer_id, *options)
        assert "result" in out, f"{out}\n{self.manager.log()}"
        return {**out["result"], "wire": self.hosts.tx_bytes() - tx,
                "cpu": (_children_cpu() - sender - self.startup_cpu, _cpu(self.manager.proc.pid) - receiver)}

    def rsync(self, *args: str, over_ssh: bool = False) -> tuple[float, int, int, float]:
        """rsync to the daemon, or over ssh to sshd: (wall seconds, bytes rsync says it sent,
        bytes the interface sent, CPU seconds of both ends: rsync and ssh here, the daemon's or
        sshd's side there)."""
        server = self.sshd if over_ssh else self.rsyncd
        args = ("-e", self.ssh, *args) if over_ssh else args
        tx, cpu = self.hosts.tx_bytes(), _children_cpu() + _cpu(server.pid)
        t0 = time.perf_counter()
        out = self.hosts.exec("a", "rsync", "--stats", *args).stdout
        t = time.perf_counter() - t0
        time.sleep(0.1)  # for the daemon (sshd) to reap its side of the connection (its CPU time then counts)
        sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
        return t, sent, self.hosts.tx_bytes() - tx, _children_cpu() + _cpu(server.pid) - cpu

    def received(self, transfer_id: str):
        return json.loads((self.manager.transfer_dir / "files.json").read_text())[transfer_id]

    def close(self) -> None:
        self.hosts.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root", pytrace=False)
    for tool in ("ip", "nsenter", "rsync", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run make setup", pytrace=False)
    if shutil.which("sshd") is None and not os.path.exists("/usr/sbin/sshd"):
        pytest.fail("sshd not found (Debian's openssh-server): run make setup", pytrace=False)
    p = Pair(tmp_path_factory.mktemp("transfer"))
    yield p
    p.close()


@pytest.fixture(scope="module")
def big(pair):
    src = pair.root / "big.src"
    _write_random(src, BIG, 11)
    yield src
    os.unlink(src)


class Ceiling:
    """This module's `sink` in namespace b (a gRPC method, over the manager's mutual TLS, that
    discards what it is sent, and a plain TCP port that does the same); `pump` in a sends
    1 GiB to either."""

    def __init__(self, pair: Pair):
        self.hosts, self.tls = pair.hosts, pair.tls
        self.sink = self.hosts.popen("b", sys.executable, "-m", "bench.test_transfer", "sink", self.hosts.addr["b"],
                                     *self.tls, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.sink.stdout.readline()
        if not line:
            raise AssertionError(f"the sink did not start (exit {self.sink.wait()})")
        self.ports = json.loads(line)

    def pump(self, kind: str) -> tuple[float, float, float]:
        """(wall seconds, CPU seconds of the sender, of the receiver) to move 1 GiB."""
        receiver = _cpu(self.sink.pid)
        out = self.hosts.exec("a", sys.executable, "-m", "bench.test_transfer", "pump", kind,
                              f"{self.hosts.addr['b']}:{self.ports[kind]}", str(BIG), *self.tls, cwd=ROOT).stdout
        r = json.loads(out.splitlines()[-1])
        return r["seconds"], r["cpu"], _cpu(self.sink.pid) - receiver


@pytest.fixture(scope="module")
def ceiling(pair):
    return Ceiling(pair)


def _cpu(pid: int) -> float:
    """CPU seconds of a process and of its children it has reaped."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MiB / seconds:.0f} MiB/s"


def _goal(ok: bool, text: str) -> str:
    return text + (" (met)" if ok else " (MISSED)")


def _in_turns(benchmark, prepare, ours, *anchors) -> None:
    """benchmark.pedantic of ours() (prepare() just before it), each anchor run once in every
    round beside it; the order turns round by round, so that each goes first in turn."""
    turn = [-1]

    def around() -> tuple[list, list]:
        items = [ours, *anchors]
        k = turn[0] % len(items)
        order = items[k:] + items[:k]
        i = order.index(ours)
        return order[:i], order[i + 1:]

    def setup():
        turn[0] += 1
        for anchor in around()[0]:
            anchor()
        prepare()
        return (), {}

    def target():
        ours()
        for anchor in around()[1]:
            anchor()
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group=GROUP)
def test_full_1gib_beside_rsync_whole_file(benchmark, pair, big, report, ceiling):
    plain, ssh = pair.rsync_dir / "big", pair.rsync_dir / "big-ssh"
    results, anchors = [], {"daemon": [], "ssh": []}  # anchors: (seconds, CPU of both ends) per round

    def daemon():
        _prepare(big, plain, out=BIG)
        t, _, _, cpu = pair.rsync("-W", str(big), pair.url(plain.name))
        anchors["daemon"].append((t, cpu))

    def over_ssh():
        _prepare(big, ssh, out=BIG)
        t, _, _, cpu = pair.rsync("-W", str(big), pair.ssh_url(ssh.name), over_ssh=True)
        anchors["ssh"].append((t, cpu))
    _in_turns(benchmark, lambda: _prepare(big, plain, ssh, out=BIG),
              lambda: results.append(pair.send(big, "bench/full")), daemon, over_ssh)

    want = copysum.digest_file(big).digest
    assert all(r["digest"] == want for r in results) and pair.received("bench/full")["digest"] == want
    o = median([r["seconds"] for r in results])
    sender, receiver = median([r["cpu"][0] for r in results]), median([r["cpu"][1] for r in results])
    (dt, dc), (st, sc) = ([median([x[i] for x in anchors[k]]) for i in (0, 1)] for k in ("daemon", "ssh"))
    print(f"\n[bench] transfer 1 GiB over TLS: send_file {[round(r['seconds'], 3) for r in results]} CPU "
          f"{[tuple(round(c, 2) for c in r['cpu']) for r in results]}; rsync -W to the daemon "
          f"{[tuple(round(c, 2) for c in x) for x in anchors['daemon']]}, over ssh "
          f"{[tuple(round(c, 2) for c in x) for x in anchors['ssh']]} (seconds, CPU)", file=sys.stderr)
    for what, anchor, t in ((f"transfer 1 GiB between two namespaces (veth), mutual TLS, median of {ROUNDS}",
                             "rsync -W to a daemon (plain text)", dt),
                            ("  the same beside the encrypted anchor", f"rsync -W -e ssh ({SSH_CIPHER})", st)):
        report.row(what, f"{_s(o)}, {_rate(BIG, o)}", f"{anchor} {_s(t)}, {_rate(BIG, t)}",
                   f"{t / o:.2f}x rsync's throughput", _goal(t / o >= 1.5, ">= 1.5x"))
    report.row("  CPU time of both ends per GiB (2 cores, shared by both ends and the host)",
               f"{_s(sender + receiver)} (sender {sender:.2f}, receiver {receiver:.2f})",
               f"rsync -W to the daemon {_s(dc)}, over ssh {_s(sc)}",
               f"{(sender + receiver) / dc:.2f}x, {(sender + receiver) / sc:.2f}x", "(for information)")
    # The transport's own ceilings, in the same run.
    moved = {"grpc": [], "tcp": []}
    for _ in range(ROUNDS):
        for kind in moved:
            _prepare(big, out=BIG)
            moved[kind].append(ceiling.pump(kind))
    (gt, gs, gr), (tt, ts, tr) = ([median([m[i] for m in moved[k]]) for i in range(3)] for k in ("grpc", "tcp"))
    print(f"\n[bench] 1 GiB moved by gRPC alone (TLS) {[tuple(round(x, 2) for x in m) for m in moved['grpc']]}, "
          f"TCP alone {[tuple(round(x, 2) for x in m) for m in moved['tcp']]} (seconds, CPU sender, receiver)",
          file=sys.stderr)
    report.row("  ceiling: 1 GiB moved by gRPC alone (mutual TLS, 4 MiB messages, 2 streams, discarded)",
               f"{_s(gt)}, CPU {gs + gr:.2f} s (sender {gs:.2f}, receiver {gr:.2f})",
               f"TCP alone (plain, 1 socket) {_s(tt)}, CPU {ts + tr:.2f} s (sender {ts:.2f}, receiver {tr:.2f})",
               f"transfer = {(sender + receiver) / (gs + gr):.2f}x gRPC's CPU", "(for information)")


def _changed(src, dst, block: int, seed: int) -> int:
    """dst: src with 1% of its `block`-byte blocks changed, each by up to 64 KiB of new bytes
    at a random place inside; the number of blocks changed."""
    shutil.copyfile(src, dst)
    rng = random.Random(seed)
    blocks = os.stat(src).st_size // block
    picked = rng.sample(range(blocks), max(1, round(blocks / 100)))
    write = min(block, 64 << 10)
    with open(dst, "r+b") as f:
        for b in picked:
            f.seek(b * block + rng.randrange(0, block - write + 1))
            f.write(os.urandom(write))
    return len(picked)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("block", [CHUNK, 64 << 10], ids=["4MiB-blocks", "64KiB-blocks"])
def test_delta_after_1pct_of_blocks_change_beside_rsync_delta(benchmark, pair, big, report, block):
    new = pair.root / "big.new"
    changed = _changed(big, new, block, block)
    base_id, new_id = f"bench/delta-{block}@1", f"bench/delta-{block}@2"
    first = pair.send(big, base_id)  # the receiver's earlier copy
    assert first["digest"] == copysum.digest_file(big).digest
    rsync_dst = pair.rsync_dir / "delta"
    ours, theirs, results, rsync_sent = [], [], [], []

    def run_rsync():
        shutil.copyfile(big, rsync_dst)  # rsync's destination holds the old copy
        _prepare(new, out=BIG)
        t, sent, wire, _ = pair.rsync("-I", "--no-W", str(new), pair.url("delta"))
        theirs.append(t)
        rsync_sent.append((sent, wire))

    def run_ours():
        results.append(pair.send(new, new_id, "--candidate", base_id))
        ours.append(results[-1]["seconds"])
    _in_turns(benchmark, lambda: _prepare(new, out=BIG), run_ours, run_rsync)
    os.unlink(new)

    r = results[-1]
    assert r["digest"] == pair.received(new_id)["digest"]
    o, t = median(ours), median(theirs)
    sent, wire = r["bytes_sent"], r["wire"]
    rs_sent, rs_wire = rsync_sent[-1]
    print(f"\n[bench] delta ({block >> 10} KiB blocks, {changed} changed): send_file {[round(x, 3) for x in ours]} "
          f"sent {sent} (wire {wire}), rsync {[round(x, 3) for x in theirs]} sent {rs_sent} (wire {rs_wire})",
          file=sys.stderr)
    what = (f"re-transfer of 1 GiB after 1% of its {block >> 10} KiB blocks changed ({changed}, 64 KiB each), "
            "receiver holding the old copy")
    report.row(what, f"sent {sent / MiB:.1f} MiB ({100 * sent / BIG:.2f}%), wire {wire / MiB:.1f} MiB",
               f"rsync delta sent {rs_sent / MiB:.1f} MiB, wire {rs_wire / MiB:.1f} MiB",
               f"{100 * sent / BIG:.2f}% of the file", _goal(sent <= 0.03 * BIG, "<= 3%"))
    report.row(f"  its time, median of {ROUNDS}", _s(o), f"rsync delta (no -W) {_s(t)}", f"{o / t:.2f}x",
               _goal(o <= 1.2 * t, "<= 1.2x rsync"))


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("layout", ["aligned", "shifted"])
def test_sparse_4gib_holding_200mib(benchmark, pair, report, layout):
    src = pair.root / f"sparse-{layout}"
    _make_sparse(src, layout == "shifted")
    data = 50 * CHUNK
    results = []

    def setup():
        _prepare(src, out=data)
        return (), {}

    def target():
        results.append(pair.send(src, f"bench/sparse-{layout}"))
    benchmark.pedantic(target, setup=setup, rounds=3, iterations=1)

    r = results[-1]
    assert r["digest"] == copysum.digest_file(src).digest
    dst = pair.received(f"bench/sparse-{layout}")["path"]
    os.sync()
    got, orig = os.stat(dst).st_blocks * 512, os.stat(src).st_blocks * 512
    sent, wire, t = r["bytes_sent"], r["wire"], median([x["seconds"] for x in results])
    os.unlink(src)
    print(f"\n[bench] sparse ({layout}): sent {sent} wire {wire} in {[round(x['seconds'], 3) for x in results]}; "
          f"allocated {got} (source {orig})", file=sys.stderr)
    what = (f"transfer of a 4 GiB sparse file holding 200 MiB "
            f"({'chunk-aligned' if layout == 'aligned' else 'each extent straddling two chunks'})")
    report.row(what, f"sent {sent / MiB:.1f} MiB in {_s(t)}", "its data, 200 MiB", f"{sent / data:.3f}x",
               _goal(sent <= 1.05 * data, "<= 1.05x"))
    report.row("  the same on the interface (gRPC, HTTP/2, TCP, IP headers)", f"{wire / MiB:.1f} MiB",
               "its data, 200 MiB", f"{wire / data:.3f}x", "(for information)")
    report.row("  allocated at the receiver", f"{got / MiB:.1f} MiB", f"source {orig / MiB:.1f} MiB",
               f"{got / orig:.3f}x", _goal(got <= orig, "as sparse as the source"))


# ============================================================================ helpers run in the namespaces

def _ceiling_main(argv: list[str]) -> int:
    """`python -m bench.test_transfer ...`. `sink ADDRESS CA CERT KEY`: a gRPC method (mutual
    TLS with that CA, certificate and key, as a manager serves) and a plain TCP port that
    discard what they are sent; prints {"grpc": port, "tcp": port}. `pump grpc|tcp HOST:PORT
    BYTES CA CERT KEY`: sends BYTES in 4 MiB messages or writes; prints {"seconds": ...,
    "cpu": ...} (the process's CPU seconds)."""
    import concurrent.futures
    import pathlib
    import socket
    import threading

    import grpc

    from vws.common import clients, tls
    from vws.manager import transfer
    transfer.keep_chunk_buffers()
    identity = tls.Identity(*(pathlib.Path(p).read_bytes() for p in argv[-3:]))
    method = ("vws.bench.Sink", "Take")
    if argv[0] == "sink":
        def take(requests, context):
            for _ in requests:
                pass
            return b""
        server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=8),
                             options=[("grpc.so_reuseport", 0), *transfer.channel_options(CHUNK)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            method[0], {method[1]: grpc.stream_unary_rpc_method_handler(take)}),))
        port = server.add_secure_port(f"{argv[1]}:0", tls.server_credentials(identity, identity.ca_pem))
        server.start()
        listener = socket.create_server((argv[1], 0))

        def drain():
            buf = memoryview(bytearray(CHUNK))
            while True:
                conn, _ = listener.accept()
                with conn:
                    while conn.recv_into(buf):
                        pass
        threading.Thread(target=drain, daemon=True).start()
        print(json.dumps({"grpc": port, "tcp": listener.getsockname()[1]}), flush=True)
        server.wait_for_termination()
        return 0
    kind, target, total = argv[1], argv[2], int(argv[3])
    message = os.urandom(CHUNK + 64)  # a chunk and its SendChunksRequest fields
    count = total // CHUNK
    if kind == "grpc":
        clients.use(identity)  # the channels send_file makes: clients.new_channel, this identity
        channels = [clients.new_channel(target, options=transfer.channel_options(CHUNK) + [
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(2)]
        for ch in channels:
            grpc.channel_ready_future(ch).result(timeout=30)
    else:
        host, _, port = target.rpartition(":")
        sock = socket.create_connection((host, int(port)))
    c0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if kind == "grpc":
        calls = [ch.stream_unary("/" + "/".join(method)).future(iter([message] * (count // 2))) for ch in channels]
        for call in calls:
            call.result()
    else:
        view = memoryview(message)[:CHUNK]
        for _ in range(count):
            sock.sendall(view)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the sink has read everything when it closes
        sock.close()
    t, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": t, "cpu": c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_ceiling_main(sys.argv[1:]))
