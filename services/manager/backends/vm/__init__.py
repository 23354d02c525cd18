"""VIRTUAL_MACHINE workspaces: a libvirt domain per workspace, booting a catalogue image."""
from __future__ import annotations

import dataclasses

from ....common import errors
from ....common.config import ManagerSettings
from ..base import Backend, BackendSettings
from .backend import LibvirtBackend, VmSettings

ORPHAN_CHOICES = ("destroy", "report")


def enabled(settings: ManagerSettings) -> bool:
    return settings.vms


def create(settings: ManagerSettings, shared: BackendSettings, get_image) -> Backend:
    if settings.vm_orphans not in ORPHAN_CHOICES:
        raise errors.InvalidArgument(f"{settings.vm_orphans!r}: use destroy or report", "vm_orphans")
    return LibvirtBackend(
        dataclasses.replace(shared, kind=LibvirtBackend.name),
        VmSettings(settings.libvirt_uri, settings.vm_domain_type, settings.vm_orphans,
                   settings.vm_shutdown_timeout.total_seconds(), settings.vm_agent_timeout.total_seconds()),
        get_image)
