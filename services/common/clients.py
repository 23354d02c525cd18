"""Channels and stubs for calling the vws services, one channel per address, all with this
process's transport security (`use`): TLS with the process's certificate and/or a bearer token,
or plain text when none was set (an explicitly insecure deployment, or a unit test). `call` and
`listed` make one service's calls to another: within TIMEOUT, page after page, and raising
domain errors."""
from __future__ import annotations

import threading
from typing import Callable, Iterator

import grpc

from . import errors, tls
from ..v1 import access_pb2_grpc, auth_pb2_grpc, factory_pb2_grpc, manager_pb2_grpc, record_pb2_grpc, repository_pb2_grpc

# How long one service waits for another's answer (calls that do more say how long they may take).
TIMEOUT = 10.0
PAGE_SIZE = 1000
# The domain errors of a call that did not reach its peer or had no answer in time: try again later.
UNREACHABLE = (errors.Unavailable, errors.DeadlineExceeded, errors.Cancelled)

# Reconnect within a second of a peer coming back (a restarted service, a reused port) rather
# than after gRPC's default backoff, which grows to two minutes.
OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
           ("grpc.initial_reconnect_backoff_ms", 100),
           ("grpc.min_reconnect_backoff_ms", 100),
           ("grpc.max_reconnect_backoff_ms", 1000)]

_channels: dict[str, grpc.Channel] = {}
_lock = threading.Lock()
_identity: tls.Identity | None = None
_bearer: str = ""


def use(identity: tls.Identity | None, bearer: str = "") -> None:
    """How this process calls: TLS trusting `identity.ca_pem`, presenting its certificate when
    it has one, and sending `authorization: Bearer <bearer>` when given; None: plain text."""
    global _identity, _bearer
    with _lock:
        _identity, _bearer = identity, bearer
        for ch in _channels.values():
            ch.close()
        _channels.clear()


def identity() -> tls.Identity | None:
    return _identity


def new_channel(address: str, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    """A channel of its own (not cached), with this process's transport security and
    credentials; `options`: its channel arguments (default OPTIONS)."""
    options = OPTIONS if options is None else options
    if _identity is None:
        return grpc.insecure_channel(address, options=options)
    creds = tls.channel_credentials(_identity)
    if _bearer:
        creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(_bearer))
    return grpc.secure_channel(address, creds, options=options)


def channel(address: str) -> grpc.Channel:
    with _lock:
        ch = _channels.get(address)
        if ch is None:
            ch = new_channel(address)
            _channels[address] = ch
        return ch


def _stubs(stub_class):
    """address -> a stub of `stub_class` on that address's shared channel."""
    def stub(address: str):
        return stub_class(channel(address))
    stub.__doc__ = f"A {stub_class.__name__} on the shared channel to `address`."
    return stub


repository = _stubs(repository_pb2_grpc.RepositoryServiceStub)
records = _stubs(record_pb2_grpc.RecordServiceStub)
factory = _stubs(factory_pb2_grpc.FactoryServiceStub)
manager = _stubs(manager_pb2_grpc.ManagerServiceStub)
access = _stubs(access_pb2_grpc.AccessServiceStub)
auth = _stubs(auth_pb2_grpc.AuthServiceStub)


def call(rpc: Callable, request, timeout: float = TIMEOUT):
    """rpc(request) within `timeout`; a gRPC error is raised as the domain error it stands for
    (errors.from_rpc_error), so callers catch errors.NotFound and the like."""
    try:
        return rpc(request, timeout=timeout)
    except grpc.RpcError as exc:
        raise errors.from_rpc_error(exc) from exc


def listed(rpc: Callable, request, field: str, timeout: float = TIMEOUT) -> Iterator:
    """Every item of a listing's repeated `field`, page after page (each page a `call`); the
    request's page_size is PAGE_SIZE unless it sets one."""
    request.page_size = request.page_size or PAGE_SIZE
    while True:
        page = call(rpc, request, timeout)
        yield from getattr(page, field)
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token
