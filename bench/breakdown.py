"""Where one create's time goes, per hop: a stack whose every service process runs under
cProfile (bench/profiling/sitecustomize.py), a run of creates through it, and the calls each
create made in each process, read back from the profiles. cProfile slows Python code down, so
the times are for comparing hops with each other, not with the timed runs."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import pstats
import shutil
import signal
import time
import uuid

from tests.integration.stack import Stack

PROFILING = pathlib.Path(__file__).parent / "profiling"


@dataclasses.dataclass(frozen=True)
class Hop:
    label: str
    process: str     # repository, factory or manager
    path: str        # the end of the function's file name, under services/
    function: str


# In the order a create meets them.
HOPS = (
    Hop("factory: CreateWorkspace, whole handler", "factory", "factory/servicer.py", "CreateWorkspace"),
    Hop("factory -> repository: AuthorizeCall", "factory", "common/auth/remote.py", "authorize"),
    Hop("factory -> repository: ListManagers (cached 1 s)", "factory", "repository/client.py", "managers"),
    Hop("factory -> repository: CreateWorkspaceRecord", "factory", "repository/client.py", "create_record"),
    Hop("  repository: CreateWorkspaceRecord handler", "repository", "repository/servicer.py",
        "CreateWorkspaceRecord"),
    Hop("factory -> manager: DeployWorkspace", "factory", "factory/gateway.py", "deploy"),
    Hop("  manager: DeployWorkspace handler", "manager", "manager/servicer.py", "DeployWorkspace"),
    Hop("  manager: the backend realises it", "manager", "manager/backends/account/", "realise"),
    Hop("  manager -> repository: ReportWorkspaceState", "manager", "repository/client.py", "report"),
    Hop("    repository: ReportWorkspaceState handler", "repository", "repository/servicer.py",
        "ReportWorkspaceState"),
    Hop("factory: the audit entry on the reply's path", "factory", "common/auth/gate.py", "leave"),
    Hop("  repository: AppendAuditEntry handler", "repository", "repository/servicer.py", "AppendAuditEntry"),
)
CONVERSIONS = ("workspace_to_pb", "workspace_from_pb")


def profile_creates(root: pathlib.Path, out: pathlib.Path, creates: int, kind: int, **manager_options
                    ) -> dict[str, pstats.Stats]:
    """`creates` creates (none deleted), after as many made and deleted as a warm-up, through a
    profiled stack under `root`; each process's
    statistics, also left in `out` as <service>-<pid>.prof for a closer look (python -m pstats)."""
    from vws.common import clients
    from vws.v1 import factory_pb2, repository_pb2, workspace_pb2
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    stack = Stack(root / "stack")
    stack.env["VWS_PROFILE_DIR"] = str(out)
    stack.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROFILING), stack.env.get("PYTHONPATH", "")]))
    try:
        stack.start(1, **manager_options)
        factory = clients.factory(stack.factory.address)
        repository = clients.repository(stack.repository.address)

        def create() -> str:
            return factory.CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
                request_id=str(uuid.uuid4()),
                workspace=workspace_pb2.Workspace(spec=workspace_pb2.WorkspaceSpec(kind=kind, start_on_create=False))),
                timeout=60).workspace.name
        # A warm-up as the timed run has one: channels, caches, and every pool account leased once
        # (its first lease makes its filesystem, which the timed run's reused accounts never do).
        for name in [create() for _ in range(creates)]:
            repository.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=name), timeout=60)
        time.sleep(1)  # the destroys' reports and audit entries land
        for p in [stack.repository, stack.factory, *stack.managers.values()]:
            p.proc.send_signal(signal.SIGUSR2)  # forget the warm-up (bench/profiling/sitecustomize.py)
        time.sleep(0.2)
        for _ in range(creates):
            create()
    finally:
        stack.close()  # a graceful stop: each process writes its profile as it exits
    stats = {}
    for f in out.glob("*.prof"):
        stats[f.name.split("-", 1)[0]] = pstats.Stats(str(f))
    return stats


def _find(stats: pstats.Stats | None, path: str, function: str) -> tuple[int, float]:
    """(calls, cumulative seconds) of the functions of that name in files whose path holds
    `path`; (0, 0) when none ran."""
    if stats is None:
        return 0, 0.0
    calls, seconds = 0, 0.0
    for (file, _, name), (_, nc, _, ct, _) in stats.stats.items():
        if name == function and path in file:
            calls, seconds = calls + nc, seconds + ct
    return calls, seconds


def breakdown(stats: dict[str, pstats.Stats], creates: int) -> str:
    """A table: each hop's calls per create and time per call, then the conversions of the
    workspace between protobuf and the domain per create, in each process."""
    lines = ["| hop | calls per create | ms per call (profiled) |", "|---|---|---|"]
    for hop in HOPS:
        calls, seconds = _find(stats.get(hop.process), hop.path, hop.function)
        per_call = f"{seconds / calls * 1000:.2f}" if calls else "-"
        lines.append(f"| {hop.label} | {calls / creates:.2f} | {per_call} |")
    total = 0.0
    parts = []
    for process in ("factory", "repository", "manager"):
        n = sum(_find(stats.get(process), "common/converters.py", f)[0] for f in CONVERSIONS) / creates
        total += n
        parts.append(f"{process} {n:.1f}")
    lines.append(f"| workspace protobuf <-> model conversions | {total:.1f} ({', '.join(parts)}) | |")
    return "\n".join(lines)
