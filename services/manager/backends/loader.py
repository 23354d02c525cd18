"""Builds the plug-ins a manager's settings ask for. Each kind's plug-in is the package the kinds
table names (vws.common.kinds, trait plug_in: backends/<plug_in>/), which answers two questions:

    enabled(settings) -> bool                      do the settings ask for it
    create(settings, shared, get_image) -> Backend  the plug-in, on the shared BackendSettings

The default kind's plug-in must start. Another that cannot start on this host (no bwrap, no
libvirtd) is logged and left out; bad settings (InvalidArgument) stop the manager either way."""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Callable

from ...common import errors, kinds, model
from ...common.config import ManagerSettings
from .base import Backend, BackendSettings
from .router import KindRouter

log = logging.getLogger("vws.manager")

# Each plug-in once, in the table's order: the first one answers for the manager's name.
PLUG_INS: tuple[str, ...] = tuple(dict.fromkeys(t.plug_in for t in kinds.TABLE.values()))


def shared_settings(settings: ManagerSettings, manager_id: str, state_dir: Path) -> BackendSettings:
    """What every plug-in is given; kind is the account plug-in's variant, the others set their own."""
    return BackendSettings(
        kind=settings.backend, manager_id=manager_id, state_dir=state_dir,
        account_prefix=settings.account_prefix, pool_prefix=settings.pool_prefix, pool_size=settings.pool_size,
        quarantine_seconds=settings.quarantine.total_seconds(), max_workspaces=settings.max_workspaces,
        cgroup_root=settings.cgroup_root, memory_bytes=settings.memory, disk_bytes=settings.disk,
        cpu_millis=settings.cpu, setup_timeout=settings.setup_timeout.total_seconds())


def load(settings: ManagerSettings, manager_id: str, state_dir: Path,
         get_image: Callable[[str], model.Image]) -> Backend:
    """The configured plug-ins: the single one, or a KindRouter over them.
    get_image(name) -> model.Image: the repository's catalogue entry (for plug-ins that boot images)."""
    shared = shared_settings(settings, manager_id, state_dir)
    required = kinds.of(kinds.DEFAULT).plug_in
    plug_ins: list[Backend] = []
    for name in PLUG_INS:
        offered = ", ".join(t.name for t in kinds.TABLE.values() if t.plug_in == name)
        try:
            package = importlib.import_module(f".{name}", __package__)
            if package.enabled(settings):
                plug_ins.append(package.create(settings, shared, get_image))
        except errors.InvalidArgument:
            raise
        except Exception as exc:  # noqa: BLE001 - the other kinds are still offered; the log says why not these
            if name == required:
                raise
            log.warning("not offering %s workspaces: %s", offered, getattr(exc, "message", exc))
    return plug_ins[0] if len(plug_ins) == 1 else KindRouter(plug_ins)
