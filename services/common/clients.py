"""Channels and stubs for calling the vws services, one channel per address."""
from __future__ import annotations

import threading

import grpc

from vws.v1 import factory_pb2_grpc, manager_pb2_grpc, record_pb2_grpc, repository_pb2_grpc

# Reconnect within a second of a peer coming back (a restarted service, a reused port) rather
# than after gRPC's default backoff, which grows to two minutes.
OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
           ("grpc.initial_reconnect_backoff_ms", 100),
           ("grpc.min_reconnect_backoff_ms", 100),
           ("grpc.max_reconnect_backoff_ms", 1000)]

_channels: dict[str, grpc.Channel] = {}
_lock = threading.Lock()


def new_channel(address: str, options: list[tuple[str, int]] | None = None) -> grpc.Channel:
    """A channel of its own (not cached), with this process's transport security and
    credentials; `options`: its channel arguments (default OPTIONS)."""
    return grpc.insecure_channel(address, options=OPTIONS if options is None else options)


def channel(address: str) -> grpc.Channel:
    with _lock:
        ch = _channels.get(address)
        if ch is None:
            ch = new_channel(address)
            _channels[address] = ch
        return ch


def repository(address: str) -> repository_pb2_grpc.RepositoryServiceStub:
    return repository_pb2_grpc.RepositoryServiceStub(channel(address))


def records(address: str) -> record_pb2_grpc.RecordServiceStub:
    return record_pb2_grpc.RecordServiceStub(channel(address))


def factory(address: str) -> factory_pb2_grpc.FactoryServiceStub:
    return factory_pb2_grpc.FactoryServiceStub(channel(address))


def manager(address: str) -> manager_pb2_grpc.ManagerServiceStub:
    return manager_pb2_grpc.ManagerServiceStub(channel(address))
