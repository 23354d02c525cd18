"""`vws factory`: admission and placement."""
from __future__ import annotations

import logging

from ..common import config
from ..common.auth import remote
from ..common.auth.serving import protect
from ..common.config import FactorySettings
from ..common.server import Service, create_server
from ..repository.client import RepositoryClient
from .gateway import GrpcManagers
from .service import WorkspaceFactory
from .servicer import FactoryServicer
from .validation import Limits
from ..v1 import factory_pb2, factory_pb2_grpc

log = logging.getLogger("vws.factory")


def serve(settings: FactorySettings, records=None, managers=None) -> tuple[Service, WorkspaceFactory]:
    authorizer = remote.OnDemand(settings.repository, settings.data_dir / "factory" / "audit-journal.db")
    protection = protect(settings, "factory", "factory", authorizer)
    factory = WorkspaceFactory(Limits.from_settings(settings), records or RepositoryClient(settings.repository),
                               managers or GrpcManagers(), repository_address=settings.repository)

    def register(server):
        factory_pb2_grpc.add_FactoryServiceServicer_to_server(FactoryServicer(factory), server)
        return [factory_pb2.DESCRIPTOR.services_by_name["FactoryService"].full_name]

    def on_stop():
        factory.stop_background()
        authorizer.close()
    service = create_server(settings.listen, register, on_stop=on_stop, **protection.server_arguments())
    factory.start_background(settings.resume_interval.total_seconds())
    return service, factory


def run(settings: FactorySettings) -> int:
    service, _ = serve(settings)
    host = settings.listen.rsplit(":", 1)[0]
    address = f"{host}:{service.port}"
    config.write_run_file(settings.data_dir, "factory", {"address": address, "repository": settings.repository})
    log.info("factory serving on %s (repository %s)", address, settings.repository)
    try:
        service.wait_for_termination()
    finally:
        config.remove_run_file(settings.data_dir, "factory")
    return 0
