"""A user's Get costs the repository one statement: the access check's first read of a
workspace answers its wire message too, which Get then takes from the read cache."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from vws.common import errors
from vws.common.auth import pki
from vws.common.auth.gate import Role
from vws.repository import db
from vws.repository.service import RepositoryService
from vws.v1 import workspace_pb2
from tests.unit.test_access import ALICE, BOB, CAROL, user
from tests.unit.test_repository_service import make_env, placed

GET = "RepositoryService/GetWorkspace"


def test_a_users_get_costs_one_statement(tmp_path):
    url = f"sqlite:///{tmp_path / 'repository.db'}"
    service, clock, _ = make_env(url)
    mine = placed(service, clock, owner=ALICE)
    service.access.grant(user(ALICE), mine.name, f"identity:{BOB}", Role.VIEWER)
    expected = service.workspaces.get_snapshot(mine.name)
    service.uow.dispose()

    engine = db.make_engine(url)
    statements: list[str] = []
    sa.event.listen(engine, "connect", lambda dbapi_connection, _: dbapi_connection.set_trace_callback(
        statements.append))
    fresh = RepositoryService(db.UnitOfWork(engine), service.settings, service.lifetimes.managers, clock=clock)
    try:
        for caller in (user(ALICE), user(BOB)):  # the owner, and a viewer by a binding: each read afresh
            fresh.access.forget(mine.name)
            fresh.workspaces.cache.invalidate(mine.name)
            statements.clear()
            fresh.access.check(caller, mine.name, Role.VIEWER, GET)
            got = fresh.workspaces.get_snapshot(mine.name)
            assert got == expected and workspace_pb2.Workspace.FromString(got).owner == ALICE
            assert len(statements) == 1, statements
        # The answer to a caller without a role is unchanged: refused, whether it exists or not.
        for name in (mine.name, "workspaces/w99999999999x"):
            with pytest.raises(errors.PermissionDenied):
                fresh.access.check(user(CAROL), name, Role.VIEWER, GET)
    finally:
        fresh.uow.dispose()


def test_the_administrators_name_is_built_once():
    # every call presenting a certificate of the site's CA is compared with it
    assert pki.admin_identity() is pki.admin_identity()
    assert pki.public_client_identity() is pki.public_client_identity()


def test_point_reads_keep_their_connection_out_of_the_pool(tmp_path):
    # a pool checkout and its reset on return cost as much as the read itself
    service, clock, _ = make_env(f"sqlite:///{tmp_path / 'repository.db'}")
    try:
        ws = placed(service, clock, owner=ALICE)
        checkouts = []
        sa.event.listen(service.uow.engine, "checkout", lambda *_: checkouts.append(1))
        for _ in range(10):
            service.workspaces.cache.invalidate(ws.name)
            assert workspace_pb2.Workspace.FromString(service.workspaces.get_snapshot(ws.name)).name == ws.name
        assert len(checkouts) <= 1
    finally:
        service.uow.dispose()
