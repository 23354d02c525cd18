"""The CLI's modules: each command group over one connection module, with no import cycle, and
`python -m vws.cli.main` (how `vws up` starts the services) handling errors as `vws` does."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import grpc
import pytest

import vws.cli
from vws.cli import connection
from vws.v1 import workspace_pb2

CLI = pathlib.Path(vws.cli.__file__).parent


def cli_imports() -> dict[str, set[str]]:
    """module -> the modules of vws.cli it imports (relative imports of this package)."""
    graph = {}
    for path in CLI.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module} if node.module else {a.name for a in node.names}
        graph[path.stem] = found
    return graph


def test_no_module_of_the_cli_imports_one_that_imports_it_back():
    graph = cli_imports()

    def reaches(start: str, seen: set[str]) -> set[str]:
        for m in graph.get(start, ()):
            if m not in seen:
                seen.add(m)
                reaches(m, seen)
        return seen
    assert [m for m in graph if m in reaches(m, set())] == []
    assert not any("main" in found for found in graph.values())


def test_run_as_a_module_a_usage_mistake_is_one_line_and_exit_2():
    # Before the split, `python -m vws.cli.main` loaded main twice and took a CliError for an unexpected one.
    r = subprocess.run([sys.executable, "-m", "vws.cli.main", "bench", "fft", "--on", "xen"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("vws: --on 'xen': name kinds from native,") and r.stderr.count("\n") == 1


def test_a_request_without_a_kind_means_the_tables_default():
    Spec = workspace_pb2.WorkspaceSpec
    assert connection.wire_kind(None) == Spec.KIND_UNIX_ACCOUNT
    assert connection.wire_kind(None, image=True) == Spec.KIND_VIRTUAL_MACHINE
    assert connection.wire_kind("sandbox", image=True) == Spec.KIND_SANDBOX
    assert [connection.kind_name(k) for k in (Spec.KIND_UNIX_ACCOUNT, Spec.KIND_VIRTUAL_MACHINE, 99)] == [
        "account", "vm", "?"]
    assert connection.host_noun(Spec.KIND_VIRTUAL_MACHINE) == "domain"
    assert connection.host_noun(Spec.KIND_SANDBOX) == connection.host_noun(Spec.KIND_UNSPECIFIED) == "account"


class Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_a_failed_call_is_read_in_one_place():
    assert connection.describe_rpc_error(Failed(grpc.StatusCode.NOT_FOUND, "no w1")) == "NOT_FOUND: no w1"
    assert connection.describe_rpc_error(Failed(grpc.StatusCode.UNAUTHENTICATED, "who?")) == "UNAUTHENTICATED: who?"
    tls = connection.describe_rpc_error(Failed(grpc.StatusCode.UNAVAILABLE, "SSL handshake failed"))
    assert tls.startswith("UNAVAILABLE: SSL handshake failed (TLS refused the connection")
    assert connection.exit_code(Failed(grpc.StatusCode.INVALID_ARGUMENT, "memory: too much")) == 2
    assert connection.exit_code(Failed(grpc.StatusCode.FAILED_PRECONDITION, "not RUNNING")) == 1


def test_reaching_turns_only_an_unavailable_service_into_its_message():
    gone = connection.CliError("cannot reach the factory", 3)
    with pytest.raises(connection.CliError) as caught:
        with connection.reaching(gone):
            raise Failed(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert caught.value is gone and caught.value.code == 3
    with pytest.raises(Failed):  # the manager answered: about the destination of a migration
        with connection.reaching(gone, unless="migration"):
            raise Failed(grpc.StatusCode.UNAVAILABLE, "migration: cannot reach managers/b")
    with pytest.raises(Failed):
        with connection.reaching(gone):
            raise Failed(grpc.StatusCode.NOT_FOUND, "no w1")
