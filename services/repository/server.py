"""`vws repository`: the system of record, one per site."""
from __future__ import annotations

import logging

from ..common import config, model
from ..common.auth.certs import slash_dn
from ..common.auth.serving import protect
from ..common.auth.service import AuthServicer
from ..common.config import RepositorySettings
from ..common.server import Service, create_server
from . import db, security
from .access import AccessStore, LocalAuthorizer
from .access_servicer import AccessServicer
from .gateway import GrpcManagers, ManagerGateway
from .paging import PageTokens
from .service import RepositoryService
from .servicer import RecordServicer, RepositoryServicer
from .workspaces import ReadCache
from ..v1 import (access_pb2, access_pb2_grpc, auth_pb2, auth_pb2_grpc, record_pb2, record_pb2_grpc, repository_pb2,
                    repository_pb2_grpc)

log = logging.getLogger("vws.repository")


def database_url(settings: RepositorySettings) -> str:
    return settings.database_url or db.default_url(settings.data_dir)


def open_database(settings: RepositorySettings) -> db.UnitOfWork:
    """The engine, the schema brought up to date by the migrations."""
    engine = db.make_engine(database_url(settings))
    try:
        db.upgrade(engine)
    except Exception:
        engine.dispose()
        raise
    return db.UnitOfWork(engine)


def serve(settings: RepositorySettings, managers: ManagerGateway | None = None,
          clock=None) -> tuple[Service, RepositoryService]:
    tokens = PageTokens.kept_in(settings.data_dir)
    uow = open_database(settings)
    clock = clock or model.utcnow
    cache = ReadCache()  # Get's: the access check's first read of a workspace fills it
    access = AccessStore(uow, clock, tokens=tokens, snapshots=cache)
    made: dict = {}

    def authorizer(local_ca):
        # The repository decides itself: it checks every kind of credential, holds the policy,
        # the role bindings and the audit trail.
        made["authenticator"] = authenticator = security.authenticator(settings, local_ca)
        made["authorizer"] = LocalAuthorizer(authenticator, access, security.administrators(settings),
                                             local_ca_dn=slash_dn(local_ca.anchors[0].subject))
        return made["authorizer"]
    try:
        protection = protect(settings, "repository", "repository", authorizer)
        policy = security.policy_file(settings) if protection.gate is not None else None
    except Exception:
        uow.dispose()
        raise
    service = RepositoryService(uow, settings, managers or GrpcManagers(), clock, policy=policy, access=access,
                                tokens=tokens, cache=cache)

    def register(server):
        repository_pb2_grpc.add_RepositoryServiceServicer_to_server(RepositoryServicer(service), server)
        record_pb2_grpc.add_RecordServiceServicer_to_server(RecordServicer(service, made.get("authorizer")), server)
        access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(service.access, service.policy), server)
        names = [repository_pb2.DESCRIPTOR.services_by_name["RepositoryService"].full_name,
                 record_pb2.DESCRIPTOR.services_by_name["RecordService"].full_name,
                 access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name]
        if "authenticator" in made:
            auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(made["authenticator"]), server)
            names.append(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name)
        return names

    def on_stop():
        service.lifetimes.stop_expiry()
        service.uow.dispose()

    def before_stop():
        service.hub.close()  # open WatchWorkspace streams end, so the drain is not held up

    try:
        server = create_server(settings.listen, register, on_stop=on_stop, **protection.server_arguments())
    except Exception:
        service.uow.dispose()
        raise
    _close_watches_first(server, before_stop)
    service.lifetimes.start_expiry()
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
