"""Migration between managers (issue 6).

The source serialises the workspace with its backend (pack), the destination checks it can
take it (accept), the source sends every file of the package through the destination's
TransferService (only the chunks it lacks, verified, resumed after a broken link), and the
destination restores it (unpack) and takes hold of it in the repository (MoveWorkspace).
The source then removes its copy. Any failure before the repository names the destination
puts the workspace back on the source as it was, and its history says why. Both ends keep
the migration on local record before they change the host, so a restart of either in the
middle is reconciled the same way (reconcile, called at every start before the rest)."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Protocol

import grpc

from ..common import errors, kinds, model, names, units
from ..common.model import EventType, State
from .backends.base import HostHandle, Package
from .held import HeldWorkspaces
from .state import IN, OUT, LocalWorkspace, Migration

log = logging.getLogger("vws.manager.migration")

REPORT_INTERVAL = 0.5  # seconds between progress reports to the repository


@dataclasses.dataclass
class FileOffer:
    role: str
    size_bytes: int
    digest: str = ""  # known up front for image files (the destination's cache is keyed by it)


@dataclasses.dataclass
class Sent:
    """What one file's transfer did (vws.manager.transfer.TransferResult has these and more)."""
    bytes_total: int
    bytes_sent: int
    bytes_reused: int
    bytes_zero: int
    resumes: int


@dataclasses.dataclass
class Result:
    workspace: model.Workspace
    source: str
    destination: str
    total_bytes: int = 0
    sent_bytes: int = 0
    reused_bytes: int = 0
    resumes: int = 0
    seconds: float = 0.0


# progress(activity, done_bytes, total_bytes, bytes_per_second)
ProgressFn = Callable[[str, int, int, float], None]


class Peers(Protocol):
    """How a manager reaches another (gRPC in production)."""

    def accept(self, address: str, workspace: model.Workspace, source: str, files: list[FileOffer],
               package: str) -> dict[str, str]: ...

    def send(self, address: str, path: Path, transfer_id: str, hint: list[str],
             progress: Callable[[int, int], None]) -> Sent: ...

    def finish(self, address: str, name: str) -> model.Workspace: ...

    def abort(self, address: str, name: str, reason: str) -> None: ...


class Arrivals(Protocol):
    """Where files other managers send this one arrive (vws.manager.transfer.TransferStore)."""

    def take(self, transfer_id: str) -> Path: ...
    def discard(self, transfer_id: str) -> bool: ...


class Repository(Protocol):
    """What a migration needs of the repository (vws.manager.gateway.GrpcRepository)."""

    def get(self, name: str) -> model.Workspace | None: ...
    def manager_address(self, name: str) -> str: ...
    def move(self, name: str, source: str, endpoint: model.Endpoint, message: str = "") -> model.Workspace: ...
    def progress(self, manager: str, name: str, progress: model.Progress | None) -> None: ...


class Migrations:
    def __init__(self, held: HeldWorkspaces, repository: Repository, peers: Peers, transfers: Arrivals,
                 workdir: Path, clock: Callable[[], float] = time.monotonic):
        """held: the workspaces held here (their locks, record and backend), shared with the
        manager; transfers: where files other managers send this one arrive."""
        self.held, self.repository, self.peers, self.transfers, self.clock = held, repository, peers, transfers, clock
        self.identity, self.state, self.backend = held.identity, held.state, held.backend
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.unsettled: set[str] = set()  # interrupted, and the repository could not yet say how they ended

    # ------------------------------------------------------------------ source
    def migrate(self, name: str, destination: str, progress: ProgressFn | None = None) -> Result:
        names.parse_manager_name(destination, "destination")
        if destination == self.identity.name:
            raise errors.InvalidArgument(f"is {destination}, which holds it already; name another manager",
                                         "destination")
        with self.held.lock(name):
            ws = self.held.require(name)
            if ws.state not in model.MIGRATABLE:
                need = " or ".join(sorted(s.value for s in model.MIGRATABLE))
                raise errors.FailedPrecondition(f"cannot migrate {name}: it is {ws.state.value}; migration needs {need}")
            address = self.repository.manager_address(destination)
            # The record's customisation goes along: the destination takes it only in the same account pool.
            record = self.repository.get(name)
            customisation = record.customisation if record is not None else None
            prior, t0 = ws.state, self.clock()
            mig = Migration(name, OUT, destination, address, prior, {"stage": "packing"})
            self.state.put_migration(mig)
            self.held.record(ws, State.MIGRATING, f"migrating to {destination} ({address})")
            handle = ws.handle
            package = Package({})
            try:
                workdir = self.workdir / ws.workspace_id
                workdir.mkdir(parents=True, exist_ok=True)
                package = self.backend.pack(handle, ws.spec, prior, workdir)
                mig.record.update(stage="packed", package=_package_record(package))
                self.state.put_migration(mig)
                offers = self._offers(package)
                sent = dataclasses.replace(self.held.view(dataclasses.replace(ws, state=prior)), customisation=customisation)
                ids = self.peers.accept(address, sent, self.identity.name, offers, json.dumps(package.meta))
                mig.record.update(stage="sending", transfer_ids=ids)
                self.state.put_migration(mig)
                figures = self._send(address, package, offers, ids, self._reporting(name, progress))
                arrived = self.peers.finish(address, name)
            except BaseException as exc:
                moved = self._moved(name, destination)
                if moved is None:  # a roll-back could run it at both ends: settled when the repository answers
                    self.unsettled.add(name)
                    raise errors.Unavailable(f"migration of {name} to {destination} interrupted ({_why(exc)}) and the "
                                             "repository cannot say whether the destination took it; this manager "
                                             "settles it when the repository answers") from None
                if not moved:
                    self._roll_back(ws, mig, package, _why(exc))
                    raise
                arrived = self.repository.get(name) or self.held.view(ws)
                figures = Sent(0, 0, 0, 0, 0)
            self._release(ws, mig, handle)
            seconds = self.clock() - t0
            return Result(arrived, self.identity.name, destination, figures.bytes_total, figures.bytes_sent,
                          figures.bytes_reused + figures.bytes_zero, figures.resumes, seconds)

    def _reporting(self, name: str, progress: ProgressFn | None) -> ProgressFn:
        """progress, and the repository told too (the workspace's progress field), at most
        every REPORT_INTERVAL seconds."""
        last = [float("-inf")]

        def report(activity: str, done: int, total: int, rate: float) -> None:
            if progress is not None:
                progress(activity, done, total, rate)
            now = self.clock()
            if now - last[0] < REPORT_INTERVAL and done < total:
                return
            last[0] = now
            try:
                self.repository.progress(self.identity.name, name,
                                           model.Progress(activity, done, total, rate, model.utcnow()))
            except Exception as exc:  # noqa: BLE001 - progress is best effort
                log.debug("progress of %s not delivered: %s", name, exc)
        return report

    def _offers(self, package: Package) -> list[FileOffer]:
        digests = {f"image-{role.lower()}": info["digest"] for role, info in package.meta.get("image", {}).items()}
        return [FileOffer(role, Path(path).stat().st_size, digests.get(role, ""))
                for role, path in sorted(package.files.items())]

    def _send(self, address: str, package: Package, offers: list[FileOffer], ids: dict[str, str],
              progress: ProgressFn | None) -> Sent:
        total = sum(o.size_bytes for o in offers)
        done_before, t0 = 0, self.clock()
        sums = Sent(total, 0, 0, 0, 0)
        activity = f"migrating ({units.format_size(total)})"
        for offer in offers:
            def moved(done: int, _total: int, base=done_before) -> None:
                if progress is not None:
                    elapsed = max(self.clock() - t0, 1e-6)
                    progress(activity, base + done, total, (base + done) / elapsed)
            r = self.peers.send(address, Path(package.files[offer.role]), ids[offer.role],
                                [offer.digest] if offer.digest else [], moved)
            sums.bytes_sent += r.bytes_sent
            sums.bytes_reused += r.bytes_reused
            sums.bytes_zero += r.bytes_zero
            sums.resumes += r.resumes
            done_before += offer.size_bytes
        if progress is not None:
            progress(activity, total, total, total / max(self.clock() - t0, 1e-6))
        return sums

    def _moved(self, name: str, destination: str) -> bool | None:
        """Whether the repository names destination as the holder (a finish whose answer was
        lost, a restart after it); None when the repository does not answer."""
        try:
            r = self.repository.get(name)
        except Exception as exc:  # noqa: BLE001
            log.warning("the repository cannot say where %s is: %s", name, exc)
            return None
        return r is not None and r.endpoint is not None and r.endpoint.manager == destination

    def _roll_back(self, ws: LocalWorkspace, mig: Migration, package: Package, why: str) -> None:
        try:
            self.peers.abort(mig.peer_address, ws.name, why)
        except Exception as exc:  # noqa: BLE001 - the destination discards it at its next start anyway
            log.warning("could not tell %s to drop the migration of %s: %s", mig.peer, ws.name, exc)
        try:
            self.backend.revert_pack(ws.handle, package, mig.prior_state)
        except errors.VwsError as exc:
            self.held.record(ws, State.FAILED, f"migration to {mig.peer} failed ({why}), and it could not be put "
                             f"back here: {exc.message}", EventType.MIGRATED)
        else:
            self.held.record(ws, mig.prior_state, f"migration to {mig.peer} failed: {why}; it carries on here as "
                             "it was", EventType.MIGRATED)
        self.state.drop_migration(ws.name)
        shutil.rmtree(self.workdir / ws.workspace_id, ignore_errors=True)

    def _release(self, ws: LocalWorkspace, mig: Migration, handle: HostHandle) -> None:
        """The destination holds it now: nothing of it stays here (no report: it is not ours)."""
        try:
            self.backend.destroy(handle)
        except Exception:  # noqa: BLE001 - the orphan sweep at the next start removes what is left
            log.exception("removing the migrated %s from this host", ws.name)
        self.state.forget(ws.name)
        self.state.drop_migration(ws.name)
        shutil.rmtree(self.workdir / ws.workspace_id, ignore_errors=True)

    # ------------------------------------------------------------- destination
    def accept(self, workspace: model.Workspace, source: str, offers: list[FileOffer], package: str
               ) -> dict[str, str]:
        name = workspace.name
        wid = names.parse_workspace_name(name, "workspace.name")
        names.parse_manager_name(source, "source")
        if workspace.state not in model.MIGRATABLE:
            raise errors.InvalidArgument(f"is {workspace.state.value}; a workspace migrates from "
                                         + " or ".join(sorted(s.value for s in model.MIGRATABLE)), "workspace.state")
        if workspace.spec.kind not in self.backend.kinds:
            raise errors.FailedPrecondition(f"manager {self.identity.name} ({self.backend.name}) does not realise "
                                            f"{kinds.name_of(workspace.spec.kind)} workspaces")
        self.held.check_pool(workspace)
        try:
            json.loads(package)
        except ValueError:
            raise errors.InvalidArgument("is not JSON", "package") from None
        with self.held.lock(name):
            known = self.state.migration(name)
            if known is not None and known.direction == IN:
                return known.record["transfer_ids"]
            if self.state.get(name) is not None:
                raise errors.FailedPrecondition(f"{name} is on {self.identity.name} already")
            self.held.check_room(workspace.spec)
            ids = {o.role: f"migrate-{wid}-{o.role}" for o in offers}
            self.state.put_migration(Migration.arrival(workspace, source, package, ids))
            return ids

    def finish(self, name: str) -> model.Workspace:
        with self.held.lock(name):
            mig = self.state.migration(name)
            if mig is None or mig.direction != IN:
                raise errors.NotFound(f"no migration of {name} to {self.identity.name} was accepted")
            arriving = mig.arriving
            try:
                files = {role: self.transfers.take(tid) for role, tid in mig.record["transfer_ids"].items()}
            except errors.NotFound as exc:
                raise errors.FailedPrecondition(f"cannot finish the migration of {name}: {exc.message}") from None
            local = LocalWorkspace(name=name, spec=arriving.spec, state=State.MIGRATING, owner=arriving.owner,
                                   labels=dict(arriving.labels), termination_time=arriving.termination_time,
                                   create_time=arriving.create_time)
            self.state.insert(local)
            handle = None
            try:
                handle = self.backend.unpack(local.workspace_id, arriving.spec,
                                             Package(files, json.loads(mig.record["package"])), mig.prior_state)
                local.host_identity = handle.host_identity
                self.repository.move(name, mig.peer, model.Endpoint(name, self.identity.name, self.identity.address,
                                                                    handle.host_identity))
            except BaseException:
                if handle is not None:
                    self.backend.destroy(handle)
                self.state.forget(name)
                self._discard(mig)
                raise
            self.held.record(local, mig.prior_state, f"arrived from {mig.peer} as {self.backend.describe(handle)}",
                             EventType.MIGRATED, enforcement=self.backend.enforcement(handle))
            self._discard(mig)
            return self.held.view(local)

    def abort(self, name: str, reason: str = "") -> bool:
        with self.held.lock(name):
            mig = self.state.migration(name)
            if mig is None or mig.direction != IN:
                return False
            log.info("migration of %s from %s aborted: %s", name, mig.peer, reason or "no reason given")
            self._discard(mig)
            return True

    def _discard(self, mig: Migration) -> None:
        for tid in mig.record.get("transfer_ids", {}).values():
            self.transfers.discard(tid)
        self.state.drop_migration(mig.name)

    # --------------------------------------------------------------- restarts
    def reconcile(self, only: set[str] | None = None) -> dict[str, list[str]]:
        """Finishes or undoes every migration a restart interrupted (or only those named); runs
        at start before the manager's own reconciliation (a guest in transit has no domain,
        which that would call vanished), and again for the unsettled ones."""
        done: dict[str, list[str]] = {"completed": [], "rolled_back": [], "dropped": [], "unsettled": []}
        for mig in self.state.migrations():
            if only is not None and mig.name not in only:
                continue
            ws = self.state.get(mig.name)
            if ws is None and mig.direction == OUT:
                self.state.drop_migration(mig.name)
                continue
            moved = self._moved(mig.name, mig.peer if mig.direction == OUT else self.identity.name)
            if moved is None:
                done["unsettled"].append(mig.name)
                continue
            if mig.direction == OUT:
                if moved:
                    self._release(ws, mig, ws.handle)
                    done["completed"].append(mig.name)
                else:
                    package = _package_from(mig.record.get("package"))
                    with self.held.lock(mig.name):
                        self._roll_back(ws, mig, package, "the manager restarted in the middle")
                    done["rolled_back"].append(mig.name)
            else:
                if ws is not None and ws.state is State.MIGRATING:
                    if moved:
                        self.state.change(ws, mig.prior_state, f"arrived from {mig.peer} (finished after a restart)",
                                       EventType.MIGRATED)
                    else:
                        self.backend.destroy(ws.handle)
                        self.state.forget(mig.name)
                self._discard(mig)
                done["dropped"].append(mig.name)
        self.unsettled = set(done["unsettled"])
        self.held.flush()
        if any(done.values()):
            log.info("migrations reconciled: %s", {k: v for k, v in done.items() if v})
        return done


def _why(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        error = errors.from_rpc_error(exc)
        return f"{error.grpc_status_code.name}: {error.message}"
    if isinstance(exc, errors.VwsError):
        return exc.message
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _package_record(package: Package) -> dict:
    return {"files": {k: str(v) for k, v in package.files.items()}, "meta": package.meta}


def _package_from(record: dict | None) -> Package:
    if not record:
        return Package({})
    return Package({k: Path(v) for k, v in record.get("files", {}).items()}, record.get("meta", {}))
