"""`vws manager`: one per resource."""
from __future__ import annotations

import logging

from ..common import config, errors, names
from ..common.auth.remote import RemoteAuthorizer
from ..common.auth.serving import protect
from ..common.config import ManagerSettings
from ..common.server import Service, create_server
from ..repository.client import RepositoryClient
from .accounting import UsageAccounting
from .backends import make_backend
from .backends.base import BackendSettings
from .backends.router import KindRouter
from .gateway import GrpcPeers
from .held import HeldWorkspaces, ManagerIdentity
from .migration import Migrations
from .service import WorkspaceManager
from .servicer import ManagerServicer
from .state import LocalState
from . import transfer
from .transfer import TransferServicer, add_to_server
from ..v1 import manager_pb2, manager_pb2_grpc

log = logging.getLogger("vws.manager")


def build(settings: ManagerSettings, repository=None) -> WorkspaceManager:
    manager_id = names.parse_manager_name(names.manager_name(settings.name), "name")
    state_dir = settings.data_dir / "manager"

    def plug_in(kind: str):
        return make_backend(BackendSettings(
            kind=kind, manager_id=manager_id, state_dir=state_dir,
            account_prefix=settings.account_prefix, pool_prefix=settings.pool_prefix, pool_size=settings.pool_size,
            quarantine_seconds=settings.quarantine.total_seconds(), max_workspaces=settings.max_workspaces,
            cgroup_root=settings.cgroup_root, memory_bytes=settings.memory, disk_bytes=settings.disk,
            cpu_millis=settings.cpu))
    repository = repository or RepositoryClient(settings.repository)
    plug_ins = [plug_in(settings.backend)]
    if settings.sandboxes:
        try:
            plug_ins.append(plug_in("sandbox"))
        except Exception as exc:  # noqa: BLE001 - accounts are still offered; the log says why not sandboxes
            log.warning("not offering sandbox workspaces: %s", getattr(exc, "message", exc))
    if settings.vms:
        try:
            from .backends.vm import LibvirtBackend, VmSettings
            if settings.vm_orphans not in ("destroy", "report"):
                raise errors.InvalidArgument(f"{settings.vm_orphans!r}: use destroy or report", "vm_orphans")
            plug_ins.append(LibvirtBackend(
                BackendSettings(kind="libvirt", manager_id=manager_id, state_dir=state_dir,
                                max_workspaces=settings.max_workspaces, memory_bytes=settings.memory,
                                disk_bytes=settings.disk, cpu_millis=settings.cpu),
                VmSettings(settings.libvirt_uri, settings.vm_domain_type, settings.vm_orphans,
                           settings.vm_shutdown_timeout.total_seconds(), settings.vm_agent_timeout.total_seconds()),
                repository.get_image))
        except errors.InvalidArgument:
            raise
        except Exception as exc:  # noqa: BLE001 - the other kinds are still offered; the log says why not VMs
            log.warning("not offering virtual-machine workspaces: %s", getattr(exc, "message", exc))
    backend = plug_ins[0] if len(plug_ins) == 1 else KindRouter(plug_ins)
    # The parts first, each given what it uses; the manager's core last, given the parts.
    identity = ManagerIdentity(manager_id, settings.advertise or settings.listen,
                               settings.heartbeat_interval.total_seconds())
    held = HeldWorkspaces(identity, LocalState(state_dir / "state.db"), backend, repository)
    accounting = UsageAccounting(held, backend, repository, state_dir / "state.db",
                                 settings.accounting_interval.total_seconds())
    # What other managers send this one (migration); the image cache is where base images are.
    transfers = transfer.TransferStore(state_dir / "transfer", image_cache=state_dir / "vm" / "cache",
                                       fsync=settings.transfer_fsync)
    migrations = Migrations(held, repository, GrpcPeers(settings.transfer_stall_timeout.total_seconds(),
                                                        settings.transfer_give_up_after.total_seconds()),
                            transfers, state_dir / "migration")
    return WorkspaceManager(held, repository, migrations, accounting)


def serve(settings: ManagerSettings, repository=None) -> tuple[Service, WorkspaceManager]:
    protection = protect(settings, "manager", names.manager_name(settings.name),
                         lambda _ca: RemoteAuthorizer(settings.repository))
    manager = build(settings, repository)
    # The host is made to agree with what this manager holds before it takes any request.
    manager.reconcile()

    def register(server):
        manager_pb2_grpc.add_ManagerServiceServicer_to_server(ManagerServicer(manager, manager.migrations), server)
        return [manager_pb2.DESCRIPTOR.services_by_name["ManagerService"].full_name,
                add_to_server(TransferServicer(manager.migrations.transfers), server)]

    def on_stop():
        manager.stop_background()
        manager.accounting.close()
        manager.migrations.transfers.close()
        manager.backend.close()
        manager.state.close()
    service = create_server(settings.listen, register, on_stop=on_stop, options=transfer.BULK_OPTIONS,
                            **protection.server_arguments())
    if not settings.advertise:
        host = settings.listen.rsplit(":", 1)[0]
        manager.identity.address = f"{host}:{service.port}"
    if not manager.heartbeat_once():
        log.warning("repository %s unreachable; will register when it answers", settings.repository)
    manager.start_background()
    return service, manager


def run(settings: ManagerSettings) -> int:
    service, manager = serve(settings)
    config.write_run_file(settings.data_dir, "manager", {"address": manager.identity.address,
                                                         "name": manager.identity.name})
    log.info("manager %s serving on %s (%s)", manager.identity.name, manager.identity.address, manager.backend.name)
    try:
        service.wait_for_termination()
    finally:
        config.remove_run_file(settings.data_dir, "manager")
    return 0
