"""What a new VM workspace is made from: its image's files propagated into this host's cache,
a copy-on-write disk over the image, and the plan of its domain."""
from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from pathlib import Path

from ....common import errors, model, units
from ..base import ProgressFn
from ..host import netshape
from . import domain as dom_xml
from .images import ImageCache
from .network import link_names

# Overlays hold only what a guest writes: small clusters keep a fresh overlay (its header,
# tables and the few blocks a boot touches) near 100 KiB instead of ~450 KiB with qcow2's
# default 64 KiB clusters, so that ten workspaces on one image take barely more than the image.
OVERLAY_OPTIONS = "cluster_size=16k"
DEFAULT_DISK_BYTES = 1024 ** 3  # for a spec naming no size (a site default of 0 lets one through)


def propagate(images: ImageCache, image: model.Image, progress: ProgressFn | None) -> dict[model.FileRole, Path]:
    """The image's files in the cache (copied there when missing), by role."""
    total = sum(f.size_bytes for f in image.files)
    activity = f"propagating image {image.image_id} ({units.format_size(total)})"
    done_before = 0
    cached: dict[model.FileRole, Path] = {}
    for f in image.files:
        if progress is not None and not images.path(f.digest).exists():
            base = done_before
            progress(activity, base, total)
            cb = (lambda done, _total, base=base: progress(activity, base + done, total))
        else:
            cb = None
        cached[f.role] = images.ensure(image, f, cb)
        done_before += f.size_bytes
    return cached


def make_disk(workspace_id: str, spec: model.WorkspaceSpec, image: model.Image,
              cached: dict[model.FileRole, Path], overlay: Path) -> int:
    """The guest's disk at overlay, over the image's disk if it has one; its size in bytes."""
    disk_bytes = spec.resources.disk_bytes or DEFAULT_DISK_BYTES
    base = cached.get(model.FileRole.DISK)
    if base is not None:
        fmt = image.file(model.FileRole.DISK).format.value.lower()
        r = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(base)], capture_output=True, text=True)
        if r.returncode:  # its digest matched: the image was added so (a qcow2 magic, then anything)
            raise errors.FailedPrecondition(
                f"the disk of image {image.image_id} is not a {fmt} image qemu can open "
                f"({errors.clip(r.stderr.strip(), 200)}); its owner must replace it with a working one")
        disk_bytes = max(disk_bytes, int(json.loads(r.stdout)["virtual-size"]))
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", OVERLAY_OPTIONS, "-F", fmt, "-b", str(base),
               str(overlay), str(disk_bytes)]
    else:
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-o", OVERLAY_OPTIONS, str(overlay), str(disk_bytes)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise errors.BackendError(f"qemu-img could not make the disk of workspaces/{workspace_id}: {r.stderr.strip()}")
    return disk_bytes


def domain_plan(workspace_id: str, spec: model.WorkspaceSpec, image: model.Image,
                cached: dict[model.FileRole, Path], wdir: Path, link: netshape.Link, *, name: str, manager: str,
                domain_type: str, memtune_hard_limit: bool) -> dom_xml.DomainPlan:
    """Makes the workspace's disk in wdir and plans its domain `name` of `manager` on link."""
    res = spec.resources
    overlay = wdir / "overlay.qcow2"
    disk_bytes = make_disk(workspace_id, spec, image, cached, overlay)
    mac_bytes = hashlib.sha256(workspace_id.encode()).digest()[:3]
    kernel, initrd = cached.get(model.FileRole.KERNEL), cached.get(model.FileRole.INITRD)
    return dom_xml.DomainPlan(
        name=name, uuid=str(uuid.uuid4()), workspace=f"workspaces/{workspace_id}",
        manager=manager, domain_type=domain_type, memory_bytes=res.memory_bytes or 256 * 1024**2,
        cpu_millis=res.cpu_millis, disk_path=str(overlay), disk_bytes=disk_bytes,
        console_log=str(wdir / "console.log"), kernel=str(kernel) if kernel else "",
        initrd=str(initrd) if initrd else "",
        kernel_args=f"{image.kernel_args or 'console=ttyS0'} vws.ip={link.inner_addr}/30 vws.gw={link.host_addr}",
        network_bits_per_second=res.network_bits_per_second, tap=f"vt{workspace_id}"[:15],
        bridge=link_names(link)[0],
        mac="52:54:00:" + ":".join(f"{b:02x}" for b in mac_bytes), guest_agent=image.guest_agent,
        memtune_hard_limit=memtune_hard_limit)
