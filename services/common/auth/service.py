"""AuthService: the login of proxy holders, server side (a thin servicer over Authenticator)
and client side (`login`: challenge, signature with the proxy's key, session token)."""
from __future__ import annotations

import datetime as dt
import os

import grpc

from .. import converters
from .credentials import Authenticator
from .session import ProxyFile
from ...v1 import auth_pb2, auth_pb2_grpc


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, authenticator: Authenticator):
        self.auth = authenticator

    def CreateChallenge(self, request, context):
        challenge, expiry = self.auth.challenge()
        return auth_pb2.CreateChallengeResponse(challenge=challenge, expire_time=converters.ts_to_pb(expiry))

    def Login(self, request, context):
        session = self.auth.login(request.challenge, list(request.certificates), request.signature)
        return auth_pb2.LoginResponse(session_token=session.token, expire_time=converters.ts_to_pb(session.expiry),
                                      identity=session.principal.identity,
                                      attributes=list(session.principal.attributes))


def login(channel: grpc.Channel, proxy_path: str | os.PathLike, timeout: float = 30
          ) -> tuple[str, dt.datetime, auth_pb2.LoginResponse]:
    """Logs in with a proxy file; returns (session token, its expiry, the whole answer)."""
    proxy = ProxyFile.load(proxy_path)
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    challenge = stub.CreateChallenge(auth_pb2.CreateChallengeRequest(), timeout=timeout).challenge
    answer = stub.Login(auth_pb2.LoginRequest(challenge=challenge, certificates=proxy.chain_der,
                                              signature=proxy.sign(challenge)), timeout=timeout)
    return answer.session_token, answer.expire_time.ToDatetime(dt.timezone.utc), answer
