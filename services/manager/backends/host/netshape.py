"""A sandbox's network: a veth pair per sandbox, the host side in the host's namespace, the other
(eth0) in the sandbox's, a private /30 each from 10.213.0.0/16, shaped with tc's token bucket
filter in both directions (the sandbox's egress on eth0, its ingress on the host side's egress).

Addresses are reserved host-wide (several managers may share a host) by creating
/run/vws/net/<index> exclusively; the reservation names the state file that owns it, so one
whose owner is gone is taken over. Reservations vanish at reboot, as the interfaces do."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import subprocess
from pathlib import Path

from ....common import errors

ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
NETWORK = ipaddress.IPv4Network("10.213.0.0/16")
SLOTS = NETWORK.num_addresses // 4
RESERVATIONS = Path("/run/vws/net")
INNER = "eth0"
HOST_PREFIX = "vwsn"  # + the slot index: at most 9 characters (IFNAMSIZ is 16 with the NUL)


@dataclasses.dataclass(frozen=True)
class Link:
    index: int

    @property
    def host_if(self) -> str:
        return f"{HOST_PREFIX}{self.index}"

    @property
    def host_addr(self) -> str:
        return str(NETWORK.network_address + 4 * self.index + 1)

    @property
    def inner_addr(self) -> str:
        return str(NETWORK.network_address + 4 * self.index + 2)


def _owner_alive(reservation: Path) -> bool:
    try:
        owner = reservation.read_text().strip()
    except FileNotFoundError:
        return False
    return bool(owner) and os.path.exists(owner)


def reserve(start: int, owner: Path, reservations: Path = RESERVATIONS) -> Link:
    """The first free slot from start on (wrapping), reserved for owner (a file that exists
    while the slot is in use)."""
    reservations.mkdir(parents=True, exist_ok=True)
    for k in range(SLOTS):
        index = (start + k) % SLOTS
        path = reservations / str(index)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if _owner_alive(path) or (Path("/sys/class/net") / Link(index).host_if).exists():
                    break
                path.unlink(missing_ok=True)  # its owner is gone: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(owner))
            return Link(index)
    raise errors.ResourceExhausted(f"no free sandbox network in {NETWORK}: all {SLOTS} are reserved "
                                   f"under {reservations}")


def release(link: Link, owner: Path, reservations: Path = RESERVATIONS) -> None:
    path = reservations / str(link.index)
    try:
        if path.read_text().strip() == str(owner):
            path.unlink()
    except FileNotFoundError:
        pass


def _run(argv: list[str], stdin: str = "") -> subprocess.Popen:
    return subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={"PATH": ROOT_PATH})


def _finish(proc: subprocess.Popen, what: str, stdin: str = "") -> None:
    _, err = proc.communicate(stdin or None, timeout=10)
    if proc.returncode != 0:
        raise errors.BackendError(f"{what} failed with status {proc.returncode}: {err.strip()}")


def tbf(dev: str, bits_per_second: int) -> list[str]:
    """A token bucket at the rate, its bucket ~10 ms of traffic (at least 64 KiB: veth hands over
    GSO packets of up to 64 KiB, which tbf would otherwise have to split)."""
    burst = max(bits_per_second // 8 // 100, 64 * 1024)
    return ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{bits_per_second}bit",
            "burst", str(burst), "latency", "50ms"]


def setup(pid: int, link: Link, bits_per_second: int) -> None:
    """Makes the pair, moves eth0 into the namespace of pid, addresses and routes both sides, and
    shapes both directions at bits_per_second (0: not shaped)."""
    host = link.host_if
    batch = f"link del {host}\n" if (Path("/sys/class/net") / host).exists() else ""
    batch += (f"link add {host} type veth peer name {INNER} netns {pid}\n"
              f"addr add {link.host_addr}/30 dev {host}\nlink set {host} up\n")
    _finish(_run(["ip", "-batch", "-"], batch), f"ip link add {host} (veth into pid {pid})", batch)
    inner = (f"addr add {link.inner_addr}/30 dev {INNER}\nlink set {INNER} up\nlink set lo up\n"
             f"route add default via {link.host_addr}\n")
    script = "ip -batch - || exit 1"
    if bits_per_second:
        script += " ; exec tc " + " ".join(tbf(INNER, bits_per_second))
    procs = [(_run(["nsenter", f"--target={pid}", "--net", "--", "/bin/sh", "-c", script], inner),
              f"configuring {INNER} in the sandbox of pid {pid}", inner)]
    if bits_per_second:
        procs.append((_run(["tc", *tbf(host, bits_per_second)]), f"tc on {host}", ""))
    failure = None
    for proc, what, text in procs:
        try:
            _finish(proc, what, text)
        except errors.BackendError as exc:
            failure = failure or exc
    if failure:
        raise failure


def teardown(link: Link) -> None:
    """Deletes the host side (and with it the pair) if it is still there. Idempotent."""
    if (Path("/sys/class/net") / link.host_if).exists():
        r = subprocess.run(["ip", "link", "del", link.host_if], capture_output=True, text=True,
                           env={"PATH": ROOT_PATH})
        if r.returncode != 0 and (Path("/sys/class/net") / link.host_if).exists():
            raise errors.BackendError(f"ip link del {link.host_if} failed: {r.stderr.strip()}")


def counters(link: Link) -> tuple[int, int]:
    """(bytes into the sandbox, bytes out of it), from the host side's statistics; (0, 0) when the
    pair is not there."""
    stats = Path("/sys/class/net") / link.host_if / "statistics"
    try:
        rx = int((stats / "rx_bytes").read_text())  # received by the host side = sent by the sandbox
        tx = int((stats / "tx_bytes").read_text())
    except (FileNotFoundError, ValueError):
        return 0, 0
    return tx, rx
