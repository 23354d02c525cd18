"""The manager's calls to other managers, over gRPC (the repository's client is
vws.repository.client)."""
from __future__ import annotations

from ..common import clients, converters, model
from ..v1 import manager_pb2


class GrpcPeers:
    """Other managers, as the migration's source reaches its destination: ManagerService for
    the migration's steps, TransferService (vws.manager.transfer) for the files."""
    ACCEPT_TIMEOUT = 60.0
    FINISH_TIMEOUT = 600.0  # restoring a guest's memory, unpacking a home

    def __init__(self, stall_timeout: float = 30.0, give_up_after: float = 600.0):
        self.stall_timeout, self.give_up_after = stall_timeout, give_up_after

    def accept(self, address: str, workspace: model.Workspace, source: str, files, package: str) -> dict[str, str]:
        r = clients.manager(address).AcceptMigration(manager_pb2.AcceptMigrationRequest(
            workspace=converters.workspace_to_pb(workspace), source=source, package=package,
            files=[manager_pb2.MigrationFile(role=f.role, size_bytes=f.size_bytes, digest=f.digest) for f in files]),
            timeout=self.ACCEPT_TIMEOUT)
        return dict(r.transfer_ids)

    def send(self, address: str, path, transfer_id: str, hint: list[str], progress):
        from . import migration, transfer
        r = transfer.send_file(address, path, transfer_id, candidates_hint=hint,
                               progress=lambda p: progress(p.bytes_done, p.bytes_total),
                               options=transfer.SendOptions(stall_timeout=self.stall_timeout,
                                                            give_up_after=self.give_up_after))
        return migration.Sent(r.bytes_total, r.bytes_sent, r.bytes_reused, r.bytes_zero, r.resumes)

    def finish(self, address: str, name: str) -> model.Workspace:
        r = clients.manager(address).FinishMigration(manager_pb2.FinishMigrationRequest(name=name),
                                                     timeout=self.FINISH_TIMEOUT)
        return converters.workspace_from_pb(r.workspace)

    def abort(self, address: str, name: str, reason: str) -> None:
        clients.manager(address).AbortMigration(manager_pb2.AbortMigrationRequest(name=name, reason=reason),
                                                timeout=clients.TIMEOUT)
