"""What a chaos stack has on the host, read from the host itself (never from the managers): the
accounts its managers made or leased, their cgroups, the loop mounts of their filesystems,
the sandbox inits and the libvirt domains. Each thing names the workspace it serves, so that
it can be held against the repository's records."""
from __future__ import annotations

import dataclasses
import glob
import os
import pathlib
import pwd
import sqlite3

from vws.manager.backends.host import disk

from tests.integration.stack import Stack, domains_of


@dataclasses.dataclass(frozen=True)
class HostThing:
    what: str        # account, lease, cgroup, mount, sandbox, domain
    manager: str     # managers/{id}
    workspace: str   # workspaces/{id}; "" when nothing on the host says whose it is
    detail: str

    def __str__(self) -> str:
        return f"{self.what} {self.detail} ({self.workspace or 'no workspace'} on {self.manager})"


def manager_ids(stack: Stack) -> dict[str, str]:
    """{manager id: its name in the stack (m0, ...)}."""
    return {stack.manager_name(n).split("/", 1)[1]: n for n in stack.managers}


def accounts(stack: Stack) -> list[HostThing]:
    """Accounts made for one workspace (dynamic accounts, sandboxes): their GECOS is
    `<mark>/<manager id>/<workspace id>`. Pool accounts are the pool's and are read as leases."""
    ids = manager_ids(stack)
    found = []
    for pw in pwd.getpwall():
        parts = pw.pw_gecos.split("/")
        if len(parts) == 3 and parts[0] in ("vws", "vws-sandbox") and parts[1] in ids:
            found.append(HostThing("account", f"managers/{parts[1]}", f"workspaces/{parts[2]}", pw.pw_name))
    return found


def leases(stack: Stack) -> list[HostThing]:
    """Pool accounts leased to a workspace, from each pool's own lease table."""
    found = []
    for mid, name in manager_ids(stack).items():
        db = stack.managers[name].data_dir / "manager" / "pool.db"
        if not db.exists():
            continue
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
            rows = c.execute("SELECT account, workspace_id FROM lease WHERE state = 'leased'").fetchall()
        found += [HostThing("lease", f"managers/{mid}", f"workspaces/{wid}", account) for account, wid in rows]
    return found


def cgroups(stack: Stack) -> list[HostThing]:
    found = set()
    for mid in manager_ids(stack):
        for path in glob.glob(f"/sys/fs/cgroup/*/vws/{mid}/*/") + glob.glob(f"/sys/fs/cgroup/vws/{mid}/*/"):
            wid = pathlib.Path(path).name
            found.add(HostThing("cgroup", f"managers/{mid}", f"workspaces/{wid}", f"vws/{mid}/{wid}"))
    return sorted(found, key=str)


def frozen(manager: str, workspace: str) -> bool | None:
    """The freezer's word on a workspace's cgroup (None: it has none)."""
    mid, wid = manager.split("/", 1)[1], workspace.split("/", 1)[1]
    for path in (f"/sys/fs/cgroup/freezer/vws/{mid}/{wid}/freezer.state", f"/sys/fs/cgroup/vws/{mid}/{wid}/cgroup.freeze"):
        try:
            text = pathlib.Path(path).read_text().strip()
        except OSError:
            continue
        return text in ("FROZEN", "FREEZING", "1")
    return None


def mounts(stack: Stack) -> list[HostThing]:
    """Loop mounts of the workspaces' filesystems: images <manager>/disks/<plug-in>/<key>.img,
    key a workspace id (or, for a pool, the pool account's name). The stock (ready-*) is the
    managers' and no workspace's."""
    found = []
    ids = {str(stack.managers[n].data_dir / "manager" / "disks"): mid for mid, n in manager_ids(stack).items()}
    for target, source, _ in disk.mounts():
        backing = disk.loop_backing(source) if source.startswith("/dev/loop") else ""
        image = pathlib.Path(backing)
        mid = next((m for top, m in ids.items() if backing.startswith(top + "/")), None)
        if mid is None or image.name.startswith(disk.READY):
            continue
        key = image.stem
        workspace = "" if key.startswith(f"vp{stack.tag}") else f"workspaces/{key}"
        found.append(HostThing("mount", f"managers/{mid}", workspace, f"{target} ({image.parent.name}/{image.name})"))
    return found


def sandboxes(stack: Stack) -> list[HostThing]:
    """Sandbox inits (bwrap, `--hostname <workspace id>`) binding a home of this stack's accounts."""
    homes = {pw.pw_dir: pw for pw in pwd.getpwall() if pw.pw_name.startswith(stack.prefix)}
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = pathlib.Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "bwrap" or "--hostname" not in argv:
            continue
        home = next((a for a in argv if a in homes), None)
        if home is None and not any(stack.prefix in a for a in argv):
            continue
        wid = argv[argv.index("--hostname") + 1]
        gecos = homes[home].pw_gecos.split("/") if home else []
        manager = f"managers/{gecos[1]}" if len(gecos) == 3 else "managers/?"
        found.append(HostThing("sandbox", manager, f"workspaces/{wid}", f"bwrap pid {entry.name}"))
    return found


def domains(stack: Stack) -> list[HostThing]:
    """libvirt domains whose vws metadata names one of the stack's managers."""
    prefix = f"managers/t{stack.tag}-"
    with domains_of(prefix) as found:
        return [HostThing("domain", manager, workspace, d.name()) for d, (workspace, manager), _ in found]


def everything(stack: Stack) -> list[HostThing]:
    return accounts(stack) + leases(stack) + cgroups(stack) + mounts(stack) + sandboxes(stack) + domains(stack)
