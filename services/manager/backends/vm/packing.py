"""Packing a VM workspace for migration. A guest moves as its saved memory (virDomainSave), its
overlay and the files of its image (the destination's cache usually has those: the transfer then
sends nothing of them). The domain is undefined here while it travels, so that a destination on
the same host can define the same name; its XML rides in the package and comes back on a revert.

Each function takes the plug-in (vm: a LibvirtBackend) and uses its public parts."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from ....common import errors, model
from ..base import HostHandle, Package
from . import domain as dom_xml
from .connection import libvirt, vir_error
from .network import link_names


def pack(vm, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir: Path) -> Package:
    wdir = vm.files.dir(handle.workspace_id)
    saved = wdir / "memory.save"
    d = vm.connection.domain(handle)
    xml = d.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
    if state in (model.State.RUNNING, model.State.PAUSED):
        vm.save(handle, d, " for migration")
    plan = vm.files.plan(handle.workspace_id)
    meta = {"xml": xml, "plan": plan, "suspend": {}}
    files = {"overlay": wdir / "overlay.qcow2"}
    if saved.exists():
        files["memory"] = saved
    if state is model.State.SUSPENDED:
        meta["suspend"] = json.loads((wdir / "suspend.json").read_text())
    image = vm.resolve_image(plan.get("image") or spec.software.image)
    meta["image"] = {f.role.value: {"digest": f.digest, "format": f.format.value} for f in image.files}
    for f in image.files:
        files[f"image-{f.role.value.lower()}"] = vm.images.path(f.digest)
    try:
        d.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as exc:
        vm.revert_pack(handle, Package(files, meta), state)
        raise errors.BackendError(f"domain {handle.host_identity} could not be handed over: "
                                  f"{vir_error(exc)}") from None
    vm.network.release(handle.workspace_id)  # its addresses go with it
    vm.files.write_plan(handle.workspace_id, {k: v for k, v in plan.items() if k != "link"})
    return Package(files, meta)


def revert_pack(vm, handle: HostHandle, package: Package, state: model.State) -> None:
    meta = package.meta
    wdir = vm.files.dir(handle.workspace_id)
    if not vm.exists(handle) and meta.get("xml"):
        vm.connection.get().defineXML(meta["xml"])
    if meta.get("plan") and "link" not in vm.files.plan(handle.workspace_id):
        vm.network.take(handle.workspace_id, dict(meta["plan"]))
    # Saved for this migration (or before a restart cut the packing short): it ran, so it runs again.
    if state in (model.State.RUNNING, model.State.PAUSED) and (wdir / "memory.save").exists():
        vm.restore_saved(handle, state, None, "after the failed migration")


def unpack(vm, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State) -> HostHandle:
    meta, files = package.meta, package.files
    handle = HostHandle(workspace_id, vm.domain_name(workspace_id), vm.kind)
    if vm.exists(handle):
        raise errors.FailedPrecondition(f"domain {handle.host_identity} already exists on this host")
    wdir = vm.files.dir(workspace_id)
    wdir.mkdir(parents=True, exist_ok=True)
    try:
        cached: dict[str, Path] = {}
        for role, info in meta["image"].items():
            path = vm.images.path(info["digest"])
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(files[f"image-{role.lower()}"]), path)
            cached[role] = path
        overlay = wdir / "overlay.qcow2"
        shutil.move(str(files["overlay"]), overlay)
        disk = meta["image"].get(model.FileRole.DISK.value)
        if disk is not None:  # the overlay's backing file is the image in this cache now
            r = subprocess.run(["qemu-img", "rebase", "-u", "-F", disk["format"].lower(), "-b",
                                str(cached[model.FileRole.DISK.value]), str(overlay)], capture_output=True, text=True)
            if r.returncode:
                raise errors.BackendError(f"the overlay of workspaces/{workspace_id} could not be rebased: "
                                          f"{r.stderr.strip()}")
        link = vm.network.take(workspace_id, dict(meta["plan"]))
        xml = dom_xml.relocate(meta["xml"], manager=vm.manager, disk=str(overlay),
                               console_log=str(wdir / "console.log"),
                               kernel=str(cached.get(model.FileRole.KERNEL.value, "")),
                               initrd=str(cached.get(model.FileRole.INITRD.value, "")),
                               bridge=link_names(link)[0])
        try:
            vm.connection.get().defineXML(xml)
        except libvirt.libvirtError as exc:
            raise errors.BackendError(f"libvirt refused the arriving domain of workspaces/{workspace_id}: "
                                      f"{vir_error(exc)}") from None
        saved = wdir / "memory.save"
        if "memory" in files:
            shutil.move(str(files["memory"]), saved)
        if state is model.State.SUSPENDED:
            (wdir / "suspend.json").write_text(json.dumps(meta["suspend"]))
        elif state in (model.State.RUNNING, model.State.PAUSED):
            vm.restore_saved(handle, state, xml, "here")
    except BaseException:
        vm.destroy(handle)
        raise
    return handle
