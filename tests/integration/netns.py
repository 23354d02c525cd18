"""Two hosts on one machine: two network namespaces joined by a veth pair, each end with its
own address, so that traffic between them really crosses an interface that a test can cut
(`ip link set ... down`), shape (tc) and count (the interface's byte counters).

`Hosts` is a context manager: whatever it started (processes in the namespaces, the
namespaces themselves and with them the veth pair) is removed on exit, failures included.

    with Hosts() as hosts:
        manager = hosts.start_manager(tmp_path / "b")          # a real manager in namespace b
        out = hosts.send(manager.address, path, "t1")          # the sender runs in namespace a

`python -m tests.integration.netns send ...` is the sender's side: it runs send_file in the
namespace it was started in and prints one JSON line per progress report and one at the end."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Self

PY = sys.executable
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


class Namespaces:
    """Network namespaces (`ns`: side -> name) that `build()` makes, as a context manager:
    `close()` removes them on exit, and when the build fails half-way."""

    ns: dict[str, str]

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        for ns in self.ns.values():
            remove_namespace(ns)  # takes the veth ends inside with it

    def prefix(self, side: str) -> tuple[str, ...]:
        """What runs a command in side's namespace."""
        # nsenter enters the network namespace only: `ip netns exec` would also remount /sys,
        # hiding the cgroup hierarchy a manager needs.
        return ("nsenter", f"--net=/run/netns/{self.ns[side]}", "--")


class Hosts(Namespaces):
    """Namespaces `a` (the sender's) and `b` (the receiver's), 10.X.Y.1 and 10.X.Y.2 on a /30."""

    def __init__(self, mtu: int = 1500):
        tag = secrets.token_hex(3)
        self.ns = {"a": f"vwstx-{tag}-a", "b": f"vwstx-{tag}-b"}
        self.dev = {"a": f"vtx{tag}a", "b": f"vtx{tag}b"}  # <= 15 characters
        net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
        self.addr = {"a": f"{net}.1", "b": f"{net}.2"}
        self.mtu = mtu
        self.procs: list[subprocess.Popen] = []

    # ---- set-up and clean-up ----

    def build(self) -> None:
        for side in "ab":
            _ip("netns", "add", self.ns[side])
        _ip("link", "add", self.dev["a"], "netns", self.ns["a"], "type", "veth",
            "peer", "name", self.dev["b"], "netns", self.ns["b"])
        for side in "ab":
            self.exec(side, "ip", "addr", "add", f"{self.addr[side]}/30", "dev", self.dev[side])
            self.exec(side, "ip", "link", "set", self.dev[side], "mtu", str(self.mtu), "up")
            self.exec(side, "ip", "link", "set", "lo", "up")

    def close(self) -> None:
        for p in self.procs:
            stop(p)
        self.procs.clear()
        super().close()

    # ---- running things in a namespace ----

    def argv(self, side: str, *argv: str) -> list[str]:
        return [*self.prefix(side), *argv]

    def exec(self, side: str, *argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(side, *argv), capture_output=True, text=True, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {self.ns[side]} exited {proc.returncode}: "
                               f"{proc.stdout}{proc.stderr}")
        return proc

    def popen(self, side: str, *argv: str, **kwargs) -> subprocess.Popen:
        p = subprocess.Popen(self.argv(side, *argv), **kwargs)
        self.procs.append(p)
        return p

    # ---- the link ----

    def link(self, up: bool) -> None:
        """Cuts (or restores) the link: sender's end down, as a pulled cable would."""
        self.exec("a", "ip", "link", "set", self.dev["a"], "up" if up else "down")

    def shape(self, rate: str | None) -> None:
        """Limits what namespace a sends to `rate` (tc tbf, e.g. "200mbit"); None removes it."""
        self.exec("a", "tc", "qdisc", "del", "dev", self.dev["a"], "root", check=False)
        if rate:
            self.exec("a", "tc", "qdisc", "add", "dev", self.dev["a"], "root", "tbf", "rate", rate,
                      "burst", "1mbit", "latency", "400ms")

    def tx_bytes(self, side: str = "a") -> int:
        """Bytes the interface of `side` has sent (headers included)."""
        for line in self.exec(side, "cat", "/proc/net/dev").stdout.splitlines():  # /proc/net: this namespace's
            name, _, counters = line.partition(":")
            if name.strip() == self.dev[side]:
                return int(counters.split()[8])
        raise RuntimeError(f"no interface {self.dev[side]} in {self.ns[side]}")

    # ---- a real manager in namespace b ----

    def start_manager(self, data_dir: pathlib.Path, *flags: str, timeout: float = 60.0) -> "Manager":
        """A real `vws manager` in namespace b, serving on its address there. Its repository
        is not reachable from there (it retries in the background); the transfer service
        does not need it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        run = data_dir / "run" / "manager.json"
        run.unlink(missing_ok=True)
        tag = self.ns["b"].split("-")[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("VWS_")}
        tls_flags = self._credential(data_dir / "tls", f"tx{tag}", self.addr["b"])
        log = open(data_dir / "manager.log", "ab")
        p = self.popen("b", PY, "-m", "vws.cli.main", "manager", "--data-dir", str(data_dir), *tls_flags,
                       "--listen", f"{self.addr['b']}:0", "--repository", f"{self.addr['b']}:1",
                       "--name", f"tx{tag}", "--account-prefix", f"vtx{tag}-", "--pool-prefix", f"vtp{tag}",
                       "--sandboxes", "false", "--vms", "false", "--accounting-interval", "0s",
                       "--log-level", "DEBUG", *flags, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                       env={**env, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if p.poll() is not None:
                raise AssertionError(f"manager exited {p.returncode}:\n{_tail(data_dir / 'manager.log')}")
            try:
                info = json.loads(run.read_text())
                if info.get("pid") == p.pid:
                    return Manager(p, info["address"], data_dir)
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"manager did not serve in {timeout}s:\n{_tail(data_dir / 'manager.log')}")
            time.sleep(0.05)

    def _credential(self, directory: pathlib.Path, name: str, address: str) -> list[str]:
        """A manager certificate of the test session's site CA for `name` at `address`, written
        to `directory`; the flags that give it to a manager."""
        from tests.integration.stack import site_pki
        site = site_pki()
        cert, key = site.issue_manager(name, hosts=[address])
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cert.pem").write_bytes(cert)
        (directory / "key.pem").write_bytes(key)
        (directory / "key.pem").chmod(0o600)
        return ["--certificate", str(directory / "cert.pem"), "--private-key", str(directory / "key.pem"),
                "--ca", str(site.ca.cert)]

    def _sender_env(self) -> dict[str, str]:
        """The sender's environment: a manager certificate of its own (transfers are for managers)."""
        if not hasattr(self, "_sender_flags"):
            d = pathlib.Path(tempfile.mkdtemp(prefix="vws-sender-"))
            self._sender_flags = self._credential(d, f"sender-{self.ns['a'].split('-')[1]}", self.addr["a"])
        f = self._sender_flags
        return {**os.environ, "PYTHONUNBUFFERED": "1", SENDER_CERT: f[1], SENDER_KEY: f[3], SENDER_CA: f[5]}

    # ---- the sender in namespace a ----

    def start_send(self, target: str, path, transfer_id: str, *options: str) -> subprocess.Popen:
        """The sender (this module's `send` command) in namespace a; JSON lines on stdout."""
        return self.popen("a", PY, "-m", "tests.integration.netns", "send", target, str(path), transfer_id,
                          *options, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          env=self._sender_env())

    def tool(self, *args: str, timeout: float = 120) -> dict:
        """This module's command line (send, corrupt, abort) in namespace a; its final JSON line."""
        proc = self.exec("a", PY, "-m", "tests.integration.netns", *args, check=False, cwd=ROOT, timeout=timeout,
                         env=self._sender_env())
        return final_line(proc.stdout, proc.stderr, proc.returncode)

    def send(self, target: str, path, transfer_id: str, *options: str, timeout: float = 300) -> dict:
        """Runs the sender to the end; its final JSON line (the result, or the error)."""
        p = self.start_send(target, path, transfer_id, *options)
        out, err = p.communicate(timeout=timeout)
        return final_line(out, err, p.returncode)


class Manager:
    def __init__(self, proc: subprocess.Popen, address: str, data_dir: pathlib.Path):
        self.proc, self.address, self.data_dir = proc, address, data_dir

    @property
    def transfer_dir(self) -> pathlib.Path:
        return self.data_dir / "manager" / "transfer"

    def log(self) -> str:
        return _tail(self.data_dir / "manager.log")


def remove_namespace(ns: str) -> None:
    """Deletes a network namespace; anything still inside (a child of a process started there)
    is killed first."""
    for pid in _ip("netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", ns, check=False)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def final_line(out: str, err: str, returncode: int) -> dict:
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    if not lines or ("result" not in lines[-1] and "error" not in lines[-1]):
        raise AssertionError(f"sender exited {returncode} without a result:\n{out[-3000:]}\n{err[-3000:]}")
    return lines[-1]


def _tail(path: pathlib.Path) -> str:
    try:
        return path.read_text(errors="replace")[-6000:]
    except OSError:
        return ""


SENDER_CERT, SENDER_KEY, SENDER_CA = "VWS_TEST_SENDER_CERT", "VWS_TEST_SENDER_KEY", "VWS_TEST_SENDER_CA"


def _main(argv: list[str] | None = None) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from vws.common import clients, errors, tls
    from vws.manager import transfer
    from vws.native import copysum
    from vws.v1 import transfer_pb2, transfer_pb2_grpc

    parser = argparse.ArgumentParser(description="one side of a transfer test, run in a namespace")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("send", help="send_file, printing progress and the result as JSON lines")
    s.add_argument("target")
    s.add_argument("path")
    s.add_argument("transfer_id")
    s.add_argument("--candidate", action="append", default=[], help="a candidate hint (repeatable)")
    s.add_argument("--give-up-after", type=float, default=120.0)
    s.add_argument("--stall-timeout", type=float, default=10.0)
    s.add_argument("--progress", action="store_true", help="print each progress report")
    c = sub.add_parser("corrupt", help="send the first chunk of path with one byte flipped")
    c.add_argument("target")
    c.add_argument("path")
    c.add_argument("transfer_id")
    a = sub.add_parser("abort", help="AbortTransfer")
    a.add_argument("target")
    a.add_argument("transfer_id")
    h = sub.add_parser("health", help="the serving status of the transfer service")
    h.add_argument("target")
    args = parser.parse_args(argv)
    clients.use(tls.Identity(*(pathlib.Path(os.environ[k]).read_bytes() for k in (SENDER_CA, SENDER_CERT, SENDER_KEY))))

    def error(exc: errors.VwsError) -> int:
        print(json.dumps({"error": {"type": type(exc).__name__, "code": exc.grpc_status_code.name,
                                    "message": exc.message}}), flush=True)
        return 1

    if args.command == "send":
        def progress(p: transfer.Progress) -> None:
            print(json.dumps({"progress": {"done": p.bytes_done, "total": p.bytes_total, "rate": p.rate}}),
                  flush=True)
        options = transfer.SendOptions(give_up_after=args.give_up_after, stall_timeout=args.stall_timeout,
                                       call_timeout=5.0)
        try:
            r = transfer.send_file(args.target, args.path, args.transfer_id, candidates_hint=args.candidate,
                                   progress=progress if args.progress else None, options=options)
        except errors.VwsError as exc:
            return error(exc)
        print(json.dumps({"result": r.as_dict()}), flush=True)
        return 0

    channel = clients.new_channel(args.target, options=transfer.channel_options(transfer.CHUNK))
    if args.command == "health":
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(
            service="vws.v1.TransferService"), timeout=10).status
        print(json.dumps({"result": {"status": status}}))
        return 0
    stub = transfer_pb2_grpc.TransferServiceStub(channel)
    try:
        if args.command == "abort":
            stub.AbortTransfer(transfer_pb2.AbortTransferRequest(transfer_id=args.transfer_id), timeout=10)
            print(json.dumps({"result": {}}))
            return 0
        size = os.stat(args.path).st_size
        opening = stub.StartTransfer(transfer_pb2.StartTransferRequest(
            transfer_id=args.transfer_id, size_bytes=size, chunk_size_bytes=transfer.CHUNK), timeout=10)
        with open(args.path, "rb") as f:
            data = bytearray(f.read(transfer.CHUNK))
        digest = copysum.digest_file(args.path).chunk_digests[0]
        data[len(data) // 2] ^= 1
        request = transfer_pb2.SendChunksRequest(transfer_id=args.transfer_id, session=opening.session, index=0,
                                                 digest=digest, source=transfer_pb2.CHUNK_SOURCE_DATA, data=bytes(data))
        stub.SendChunks(iter([request]), timeout=30)
        print(json.dumps({"result": {}}))
        return 0
    except grpc.RpcError as exc:
        return error(errors.for_status(exc.code(), exc.details() or ""))


if __name__ == "__main__":
    sys.exit(_main())
