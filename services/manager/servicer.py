"""ManagerService over gRPC: converts and calls the service layer. Exec pumps the program's
standard streams between the client's stream and the process."""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading

import grpc

from ..common import converters, errors, model
from ..common.model import Action
from .migration import FileOffer, Migrations
from .service import WorkspaceManager
from ..v1 import manager_pb2, manager_pb2_grpc

log = logging.getLogger("vws.manager")
CHUNK = 64 * 1024


class ManagerServicer(manager_pb2_grpc.ManagerServiceServicer):
    def __init__(self, manager: WorkspaceManager, migrations: Migrations):
        self.manager, self.migrations = manager, migrations

    # ----------------------------------------------------------------- migration
    def MigrateWorkspace(self, request, context):
        """The migration runs in a thread of its own: a client that goes away does not stop it."""
        events: queue.Queue = queue.Queue()

        def progress(activity: str, done: int, total: int, rate: float) -> None:
            events.put(("progress", manager_pb2.MigrateWorkspaceResponse(progress=converters.progress_to_pb(
                model.Progress(activity, done, total, rate, model.utcnow())))))

        def work() -> None:
            try:
                events.put(("result", self.migrations.migrate(request.name, request.destination, progress)))
            except BaseException as exc:  # noqa: BLE001 - handed to the call, which maps it
                events.put(("error", exc))
        threading.Thread(target=work, daemon=True, name=f"migrate {request.name}").start()
        while True:
            kind, value = events.get()
            if kind == "progress":
                yield value
            elif kind == "error":
                raise value
            else:
                r = value
                yield manager_pb2.MigrateWorkspaceResponse(result=manager_pb2.MigrationResult(
                    workspace=converters.workspace_to_pb(r.workspace), source=r.source, destination=r.destination,
                    total_bytes=r.total_bytes, sent_bytes=r.sent_bytes, reused_bytes=r.reused_bytes,
                    resumes=r.resumes, seconds=r.seconds))
                return

    def AcceptMigration(self, request, context):
        ids = self.migrations.accept(converters.workspace_from_pb(request.workspace), request.source,
                                        [FileOffer(f.role, f.size_bytes, f.digest) for f in request.files],
                                        request.package)
        return manager_pb2.AcceptMigrationResponse(transfer_ids=ids)

    def FinishMigration(self, request, context):
        ws = self.migrations.finish(request.name)
        return manager_pb2.FinishMigrationResponse(workspace=converters.workspace_to_pb(ws))

    def AbortMigration(self, request, context):
        self.migrations.abort(request.name, request.reason)
        return manager_pb2.AbortMigrationResponse()

    def DeployWorkspace(self, request, context):
        ws = self.manager.deploy(converters.workspace_from_pb(request.workspace))
        return manager_pb2.DeployWorkspaceResponse(workspace=converters.workspace_to_pb(ws))

    def _move(self, request, action: Action):
        return converters.workspace_to_pb(self.manager.transition(request.name, action))

    def StartWorkspace(self, request, context):
        return manager_pb2.StartWorkspaceResponse(workspace=self._move(request, Action.START))

    def StopWorkspace(self, request, context):
        ws = self.manager.transition(request.name, Action.STOP, force=request.force)
        return manager_pb2.StopWorkspaceResponse(workspace=converters.workspace_to_pb(ws))

    def PauseWorkspace(self, request, context):
        return manager_pb2.PauseWorkspaceResponse(workspace=self._move(request, Action.PAUSE))

    def ResumeWorkspace(self, request, context):
        return manager_pb2.ResumeWorkspaceResponse(workspace=self._move(request, Action.RESUME))

    def SuspendWorkspace(self, request, context):
        return manager_pb2.SuspendWorkspaceResponse(workspace=self._move(request, Action.SUSPEND))

    def RebootWorkspace(self, request, context):
        return manager_pb2.RebootWorkspaceResponse(workspace=self._move(request, Action.REBOOT))

    def DestroyWorkspace(self, request, context):
        ws = self.manager.destroy(request.name, request.reason)
        return manager_pb2.DestroyWorkspaceResponse(workspace=converters.workspace_to_pb(ws))

    def Exec(self, request_iterator, context):
        try:
            first = next(request_iterator)
        except StopIteration:
            raise errors.InvalidArgument("the stream was empty; the first message names the workspace "
                                         "and the program", "name") from None
        proc = self.manager.spawn(first.name, list(first.argv), dict(first.environment), first.working_directory)
        out: queue.Queue = queue.Queue()

        def pump(stream, kind):
            try:
                while chunk := stream.read1(CHUNK):
                    out.put((kind, chunk))
            finally:
                out.put((kind, None))

        def feed():
            try:
                if first.stdin:
                    proc.stdin.write(first.stdin)
                    proc.stdin.flush()
                if not first.close_stdin:
                    for msg in request_iterator:
                        if msg.stdin:
                            proc.stdin.write(msg.stdin)
                            proc.stdin.flush()
                        if msg.close_stdin:
                            break
            except (BrokenPipeError, ValueError, grpc.RpcError):
                pass  # the program closed its input or the client went away
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        def on_cancel():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        context.add_callback(on_cancel)
        threads = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True),
                   threading.Thread(target=feed, daemon=True)]
        for t in threads:
            t.start()
        open_streams = 2
        while open_streams:
            kind, chunk = out.get()
            if chunk is None:
                open_streams -= 1
                continue
            yield manager_pb2.ExecResponse(**{kind: chunk})
        code = proc.wait()
        sig = -code if code < 0 else 0
        yield manager_pb2.ExecResponse(exit_status=manager_pb2.ExitStatus(code=128 + sig if sig else code, signal=sig))
