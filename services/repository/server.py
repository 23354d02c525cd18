"""`vws repository`: the system of record, one per site."""
from __future__ import annotations

import logging

from vws.common import config
from vws.common.config import RepositorySettings
from vws.common.server import Service, create_server
from vws.repository import db
from vws.repository.gateway import GrpcManagers, ManagerGateway
from vws.repository.service import RepositoryService
from vws.repository.servicer import RecordServicer, RepositoryServicer
from vws.v1 import record_pb2, record_pb2_grpc, repository_pb2, repository_pb2_grpc

log = logging.getLogger("vws.repository")


def database_url(settings: RepositorySettings) -> str:
    return settings.database_url or db.default_url(settings.data_dir)


def build(settings: RepositorySettings, managers: ManagerGateway | None = None, clock=None) -> RepositoryService:
    """The engine, the schema brought up to date by the migrations, and the service layer."""
    engine = db.make_engine(database_url(settings))
    try:
        db.upgrade(engine)
    except Exception:
        engine.dispose()
        raise
    kwargs = {"clock": clock} if clock is not None else {}
    return RepositoryService(db.UnitOfWork(engine), settings, managers or GrpcManagers(), **kwargs)


def serve(settings: RepositorySettings, managers: ManagerGateway | None = None,
          clock=None) -> tuple[Service, RepositoryService]:
    service = build(settings, managers, clock)

    def register(server):
        repository_pb2_grpc.add_RepositoryServiceServicer_to_server(RepositoryServicer(service), server)
        record_pb2_grpc.add_RecordServiceServicer_to_server(RecordServicer(service), server)
        return [repository_pb2.DESCRIPTOR.services_by_name["RepositoryService"].full_name,
                record_pb2.DESCRIPTOR.services_by_name["RecordService"].full_name]

    def on_stop():
        service.stop_expiry()
        service.uow.dispose()

    def before_stop():
        service.hub.close()  # open WatchWorkspace streams end, so the drain is not held up

    try:
        server = create_server(settings.listen, register, on_stop=on_stop)
    except Exception:
        service.uow.dispose()
        raise
    _close_watches_first(server, before_stop)
    service.start_expiry()
    return server, service


def _close_watches_first(server: Service, before: callable) -> None:
    stop = server.stop

    def stop_with_watches(grace: float = 5.0) -> None:
        before()
        stop(grace)
    server.stop = stop_with_watches


def run(settings: RepositorySettings) -> int:
    server, _ = serve(settings)
    host = settings.listen.rsplit(":", 1)[0]
    address = f"{host}:{server.port}"
    config.write_run_file(settings.data_dir, "repository", {"address": address})
    log.info("repository serving on %s (%s)", address, database_url(settings).split("://", 1)[0])
    try:
        server.wait_for_termination()
    finally:
        config.remove_run_file(settings.data_dir, "repository")
    return 0
