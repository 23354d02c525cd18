"""The VM plug-in's network. Each guest's interface (a tap libvirt makes) sits on a bridge of its
own, joined to the host by a veth pair with a private /30 (netshape's address reservations,
shared with sandboxes). Both directions are shaped by token buckets on the pair's two egresses:
libvirt's own <bandwidth> needs the sfq and police modules, which hosts like ours lack, and tc
can only police a tap's ingress with them. The bridge itself must not be a way into the host, or
the guest's traffic would skip the pair and its bucket (see seal_bridge)."""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

from ....common import errors
from ..host import netshape
from .files import WorkspaceFiles

log = logging.getLogger("vws.manager.vm")

NET = Path("/sys/class/net")


def link_names(link: netshape.Link) -> tuple[str, str, str]:
    """(bridge, host side of the pair, bridge side of the pair) for a reserved link."""
    return f"vwsb{link.index}", f"vwsn{link.index}", f"vwsp{link.index}"


def seal_bridge(workspace_id: str, bridge: str) -> None:
    """Makes the host unreachable through the bridge's own interface, leaving the pair as the
    guest's only way in. A bridge takes the address of its first port, the pair's bridge end,
    and answered the guest's ARP with it: frames to that address are delivered to the host by
    the bridge without leaving through the pair, so the guest's outbound traffic was not
    shaped at all. With ARP off on the bridge, the host answers only from the pair's host end;
    a guest that forges the bridge's address into its ARP table is stopped by the strict
    reverse-path filter (its address routes through the pair, not the bridge); and the bridge
    has no IPv6. Idempotent: also run on a bridge made before this existed."""
    r = subprocess.run(["ip", "link", "set", "dev", bridge, "arp", "off"], capture_output=True, text=True)
    try:
        if r.returncode:
            raise OSError(r.stderr.strip())
        (Path("/proc/sys/net/ipv4/conf") / bridge / "rp_filter").write_text("1\n")
        ipv6 = Path("/proc/sys/net/ipv6/conf") / bridge / "disable_ipv6"
        if ipv6.exists():
            ipv6.write_text("1\n")
    except OSError as exc:
        raise errors.BackendError(f"the bridge {bridge} of workspaces/{workspace_id} could not be closed to the "
                                  f"host, so its bandwidth could not be enforced: {exc}") from None
    if Path("/proc/sys/net/ipv4/conf/all/rp_filter").read_text().strip() == "2":
        log.warning("net.ipv4.conf.all.rp_filter is 2 (loose), which overrides the strict filter on %s: a guest "
                    "that forges its ARP table can reach the host past its bandwidth limit; set it to 0 or 1",
                    bridge)


class GuestNetwork:
    """Each workspace's link, reserved in its plan.json and made on the host while it runs."""

    def __init__(self, files: WorkspaceFiles):
        self.files = files

    def reserve(self, workspace_id: str) -> netshape.Link:
        """A link for a new workspace, owned by its plan.json (which must exist)."""
        return netshape.reserve(int(hashlib.sha256(workspace_id.encode()).hexdigest(), 16) % netshape.SLOTS,
                                self.files.plan_path(workspace_id))

    def link(self, workspace_id: str) -> netshape.Link | None:
        index = self.files.plan(workspace_id).get("link")
        return None if index is None else netshape.Link(int(index))

    def ensure(self, workspace_id: str) -> None:
        """The bridge and the shaped pair of the workspace's link, made if missing."""
        plan = self.files.plan(workspace_id)
        link = self.link(workspace_id)
        if link is None:
            return
        bridge, host, peer = link_names(link)
        if (NET / bridge).exists() and (NET / host).exists():
            seal_bridge(workspace_id, bridge)
            return
        batch = "".join(f"link del {d}\n" for d in (bridge, host) if (NET / d).exists())
        batch += (f"link add {bridge} type bridge\nlink set {bridge} up\n"
                  f"link add {host} type veth peer name {peer}\nlink set {peer} master {bridge}\n"
                  f"link set {peer} up\naddr add {link.host_addr}/30 dev {host}\nlink set {host} up\n")
        r = subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True, text=True)
        if r.returncode:
            raise errors.BackendError(f"the network of workspaces/{workspace_id} could not be made: {r.stderr.strip()}")
        seal_bridge(workspace_id, bridge)
        rate = plan.get("network_bits_per_second", 0)
        for dev in (peer, host) if rate else ():
            r = subprocess.run(["tc", *netshape.tbf(dev, rate)], capture_output=True, text=True)
            if r.returncode:
                raise errors.BackendError(f"shaping {dev} of workspaces/{workspace_id} failed: {r.stderr.strip()}")

    def release(self, workspace_id: str) -> None:
        """Removes the link's devices and gives its reservation back."""
        link = self.link(workspace_id)
        if link is None:
            return
        for dev in link_names(link)[:2]:
            if (NET / dev).exists():
                subprocess.run(["ip", "link", "del", dev], capture_output=True)
        netshape.release(link, self.files.plan_path(workspace_id))

    def take(self, workspace_id: str, plan: dict) -> netshape.Link:
        """The link plan names (its addresses are in the guest's memory), or the next free one;
        plan.json records which."""
        path = self.files.plan_path(workspace_id)
        path.write_text(json.dumps(plan))
        link = netshape.reserve(int(plan.get("link", 0)), path)
        if link.index != plan.get("link"):
            log.warning("workspaces/%s is on link %d, not %s: the guest keeps its old address until it reboots",
                        workspace_id, link.index, plan.get("link"))
        plan.update(link=link.index, guest_addr=link.inner_addr, host_addr=link.host_addr)
        path.write_text(json.dumps(plan))
        return link

    def counters(self, workspace_id: str) -> tuple[int, int] | None:
        """(bytes the guest received, bytes it sent), from the host side of its pair."""
        link = self.link(workspace_id)
        if link is None:
            return None
        stats = NET / link_names(link)[1] / "statistics"
        try:  # the host side sends what the guest receives
            return int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())
        except (OSError, ValueError):
            return None
