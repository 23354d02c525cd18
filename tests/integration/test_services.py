"""Each service on its own: health checking, reflection, and a graceful stop on SIGTERM."""
from __future__ import annotations

import signal

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from vws.common import clients

EXPECTED = {"repository": {"vws.v1.RepositoryService", "vws.v1.RecordService"},
            "factory": {"vws.v1.FactoryService"}, "manager": {"vws.v1.ManagerService"}}


def services_listed(address: str) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(clients.channel(address))
    answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    return {s.name for a in answers for s in a.list_services_response.service}


def test_health_reflection_and_graceful_stop(stack):
    for process in (stack.repository, stack.factory, stack.managers["m0"]):
        health = health_pb2_grpc.HealthStub(clients.channel(process.address))
        for service in EXPECTED[process.service] | {""}:
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING, (process.service, service)
        listed = services_listed(process.address)
        assert EXPECTED[process.service] <= listed and "grpc.health.v1.Health" in listed
    for process in (stack.managers["m0"], stack.factory, stack.repository):
        run_file = process.data_dir / "run" / f"{process.service}.json"
        assert run_file.exists()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=30) == 0, process.log()
        assert not run_file.exists()
        assert "Traceback" not in process.log()
