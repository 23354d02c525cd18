"""`vws manager`: one per resource."""
from __future__ import annotations

import logging

from ..common import config, names
from ..common.auth import remote
from ..common.auth.serving import protect
from ..common.config import ManagerSettings
from ..common.server import Service, create_server
from ..repository.client import RepositoryClient
from .accounting import UsageAccounting
from .backends import loader
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
    repository = repository or RepositoryClient(settings.repository)
    backend = loader.load(settings, manager_id, state_dir, repository.get_image)
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
    authorizer = remote.OnDemand(settings.repository, settings.data_dir / "manager" / "audit-journal.db")
    protection = protect(settings, "manager", names.manager_name(settings.name), authorizer)
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
        authorizer.close()
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
