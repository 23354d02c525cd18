"""Admission on the host: a spec this host cannot enforce as asked is refused, naming each
resource, before anything is made; a limit is never accepted and silently weakened."""
from __future__ import annotations

import grp
import os
import shutil

from ....common import errors, model, units
from ..host.cgroups import CPU_PERIOD_US, CgroupDriver
from ..host.disk import DiskImages, image_size
from .users import ROOT_PATH



def check(spec: model.WorkspaceSpec, cap: model.Capacity, cgroups: CgroupDriver, disks: DiskImages,
          shapes_network: bool, manager_id: str) -> None:
    """ResourceExhausted for a limit this host cannot enforce; FailedPrecondition for a Unix
    group the policy names that the host lacks."""
    group = spec.software.unix_group
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise errors.FailedPrecondition(
                f"workspace.spec.software.unix_group: the site's policy puts this workspace's account in Unix "
                f"group {group!r}, which does not exist on manager {manager_id}; create it there (groupadd "
                f"{group}) or change the policy's customise.unix_group") from None
    r = spec.resources
    v: list[tuple[str, str]] = []
    size = units.format_size
    f = "workspace.spec.resources."
    asked = [n for n, val in (("memory", r.memory_bytes), ("cpu", r.cpu_millis), ("pids", r.max_processes)) if val]
    for n in cgroups.missing(asked):
        field = {"memory": "memory_bytes", "cpu": "cpu_millis", "pids": "max_processes"}[n]
        v.append((f + field, f"this host has no cgroup {n} controller (cgroup v{cgroups.version} at "
                  f"{cgroups.root}) to enforce it"))
    if r.network_bits_per_second and not shapes_network:
        v.append((f + "network_bits_per_second", "network: this kind of workspace shares the host's network, "
                  "so no bandwidth can be enforced for it; ask for none, or use kind sandbox"))
    if cap.memory_bytes and r.memory_bytes > cap.memory_bytes:
        v.append((f + "memory_bytes", f"memory: {size(r.memory_bytes)} wanted, this host offers at most "
                  f"{size(cap.memory_bytes)} to one workspace"))
    cores = (os.cpu_count() or 1) * 1000
    if r.cpu_millis > min(cap.cpu_millis or cores, cores):
        v.append((f + "cpu_millis", f"cpu: {r.cpu_millis}m wanted, this host has {min(cap.cpu_millis or cores, cores)}m"))
    elif 0 < r.cpu_millis * CPU_PERIOD_US // 1000 < 1000:
        v.append((f + "cpu_millis", f"cpu: {r.cpu_millis}m is under the smallest quota the kernel enforces (10m)"))
    if r.disk_bytes:
        if not shutil.which("mkfs.ext4", path=ROOT_PATH):
            v.append((f + "disk_bytes", "this host cannot make disk images (no mkfs.ext4; install e2fsprogs)"))
        else:
            st = os.statvfs(disks.dir)
            free = st.f_bavail * st.f_frsize
            need = image_size(r.disk_bytes)[0]
            ready = r.disk_bytes == disks.stock_bytes and disks.ready() > 0
            if need > free and not ready:
                v.append((f + "disk_bytes", f"disk: {size(r.disk_bytes)} wanted, {size(free)} free for disk "
                          f"images in {disks.dir}"))
    if v:
        raise errors.ResourceExhausted("this host cannot enforce the limits asked: " + "; ".join(d for _, d in v), v)
