"""The factory's and the managers' Authorizer against a repository that counts its AuthorizeCalls:
a run of creates by one credential asks once, within a few seconds and the credential's life;
calls that need a role on a workspace, other credentials and refusals always ask."""
from __future__ import annotations

import datetime as dt

import grpc
import pytest

from vws.common import clients, converters
from vws.common.auth import gate
from vws.common.auth.principal import CredentialKind, Principal
from vws.common.auth.remote import REMEMBERED_FOR, RemoteAuthorizer
from vws.common.server import create_server
from vws.v1 import record_pb2, record_pb2_grpc

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


class Repository(record_pb2_grpc.RecordServiceServicer):
    def __init__(self):
        self.asked: list[str] = []
        self.expiry = NOW + dt.timedelta(hours=1)

    def AuthorizeCall(self, request, context):
        self.asked.append(request.authorization)
        if request.authorization == "Bearer nobody":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no")
        who = request.authorization.split()[-1]
        principal = Principal(identity=who, kind=CredentialKind.TOKEN, attributes=(), expiry=self.expiry, digest=who)
        return record_pb2.AuthorizeCallResponse(caller=converters.caller_to_pb(gate.Caller(who, principal)))


@pytest.fixture
def repository():
    before = clients.identity()
    clients.use(None)
    fake = Repository()

    def register(s):
        record_pb2_grpc.add_RecordServiceServicer_to_server(fake, s)
        return []
    service = create_server("127.0.0.1:0", register, max_workers=2)
    fake.address = f"127.0.0.1:{service.port}"
    yield fake
    service.stop(0)
    clients.use(before)


def call(who: str, action: str = "FactoryService/CreateWorkspace") -> gate.Call:
    return gate.Call(action=action, target="", source="ipv4:127.0.0.1:1", authorization=f"Bearer {who}")


def test_a_run_of_creates_by_one_credential_asks_the_repository_once(repository):
    now = [NOW]
    authorizer = RemoteAuthorizer(repository.address, clock=lambda: now[0])
    create = gate.rule_for("/vws.v1.FactoryService/CreateWorkspace")
    first = authorizer.authorize(call("alice"), create)
    for _ in range(2):
        assert authorizer.authorize(call("alice"), create) is first  # with its entitlement
    assert repository.asked == ["Bearer alice"]
    authorizer.authorize(call("bob"), create)
    assert repository.asked == ["Bearer alice", "Bearer bob"]
    now[0] += REMEMBERED_FOR
    authorizer.authorize(call("alice"), create)
    assert repository.asked.count("Bearer alice") == 2


def test_a_role_on_a_workspace_a_refusal_and_an_ended_credential_always_ask(repository):
    now = [NOW]
    authorizer = RemoteAuthorizer(repository.address, clock=lambda: now[0])
    stop = gate.rule_for("/vws.v1.ManagerService/StopWorkspace")
    for _ in range(2):
        authorizer.authorize(call("alice", "ManagerService/StopWorkspace"), stop)
    assert repository.asked == ["Bearer alice"] * 2
    create = gate.rule_for("/vws.v1.FactoryService/CreateWorkspace")
    for _ in range(2):
        with pytest.raises(grpc.RpcError):
            authorizer.authorize(call("nobody"), create)
    assert repository.asked.count("Bearer nobody") == 2
    repository.expiry = NOW + dt.timedelta(seconds=1)  # a credential about to end
    authorizer.authorize(call("carol"), create)
    now[0] += dt.timedelta(seconds=1)
    authorizer.authorize(call("carol"), create)
    assert repository.asked.count("Bearer carol") == 2
