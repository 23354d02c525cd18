"""The manager's service layer: the workspace state machine on this host, heartbeats, and
reconciliation after any crash. The workspaces it holds, and the delivery of their changes to
the repository, are in the book it is given (vws.manager.held), shared with its migrations and
its usage accounting. It talks to the host only through its backend plug-in and never
branches on the kind."""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from typing import Callable, Protocol

from ..common import errors, kinds, model, names
from ..common.model import Action, State
from . import exec_limits
from .accounting import UsageAccounting
from .backends.base import ExecOptions
from .held import HeldWorkspaces, is_unreachable
from .migration import Migrations
from .state import LocalWorkspace, Report

log = logging.getLogger("vws.manager")


class RepositoryGateway(Protocol):
    """What the manager needs of the repository (gRPC in production, a fake in unit tests).
    Every method raises one of clients.UNREACHABLE when the repository is unreachable."""

    def report(self, manager: str, report: Report) -> None: ...
    def register(self, info: model.ManagerInfo) -> None: ...
    def heartbeat(self, manager: str, allocated: model.Capacity) -> bool: ...  # False: not registered
    def workspaces_on(self, manager: str) -> list[model.Workspace]: ...
    def get(self, name: str) -> model.Workspace | None: ...
    def progress(self, manager: str, name: str, progress: model.Progress | None) -> None: ...
    def manager_address(self, name: str) -> str: ...  # an available manager's address
    def move(self, name: str, source: str, endpoint: model.Endpoint, message: str = "") -> model.Workspace: ...


_DONE = {Action.START: "started", Action.STOP: "stopped: every process killed, account locked",
         Action.PAUSE: "paused: processes frozen", Action.RESUME: "resumed", Action.SUSPEND: "suspended",
         Action.REBOOT: "rebooted"}
PROGRESS_INTERVAL = 0.5  # seconds between progress reports to the repository


class WorkspaceManager:
    def __init__(self, held: HeldWorkspaces, repository: RepositoryGateway, migrations: Migrations,
                 accounting: UsageAccounting, clock: Callable[[], float] = time.monotonic):
        """held: the workspaces held here (and the backend realising them); migrations and
        accounting: the manager's other parts, built on the same book."""
        self.held, self.repository, self.migrations, self.accounting = held, repository, migrations, accounting
        self.identity, self.backend, self.state = held.identity, held.backend, held.state
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._registered = False
        self._reconciled_with_repository = False
        self._clock = clock

    # ------------------------------------------------------------- lifecycle
    def deploy(self, workspace: model.Workspace) -> model.Workspace:
        """Realises a placed workspace. Idempotent on its name; on failure nothing is left."""
        wid = names.parse_workspace_name(workspace.name, "workspace.name")
        if workspace.spec.kind not in self.backend.kinds:
            raise errors.Unimplemented(
                f"manager {self.identity.name} ({self.backend.name}) does not realise "
                f"{workspace.spec.kind.value if workspace.spec.kind else 'unspecified'} workspaces")
        self.held.check_pool(workspace)
        with self.held.lock(workspace.name):
            existing = self.state.get(workspace.name)
            # A deploy a crash cut short, undone at reconciliation (FAILED, nothing on the host): the
            # retried create deploys it again, in the room it already holds.
            again = existing is not None and existing.state is State.FAILED and not existing.host_identity
            if existing is not None and not again:
                return self.held.view(existing)
            if again:
                ws = existing
                self.state.change(ws, State.PENDING, "deploying again for the retried create")
            else:
                self.held.check_room(workspace.spec)
                ws = LocalWorkspace(
                    name=workspace.name, spec=workspace.spec, state=State.PENDING, owner=workspace.owner,
                    labels=dict(workspace.labels), termination_time=workspace.termination_time,
                    create_time=workspace.create_time or model.utcnow())
                # The intent is on disk before the host changes, so a crash mid-deploy is found and undone.
                self.state.insert(ws)
            try:
                handle = self.backend.realise(wid, workspace.spec, self._progress_reporter(ws))
                ws.host_identity = handle.host_identity
                if workspace.spec.start_on_create:
                    self.backend.start(handle)
            except BaseException as exc:
                if not again:
                    self.state.forget(workspace.name)
                try:
                    if ws.host_identity:
                        self.backend.destroy(ws.handle)
                except Exception:  # noqa: BLE001 - the original failure is what the caller needs
                    log.exception("undoing the failed deploy of %s", workspace.name)
                if again:  # it stays on record, FAILED, for its owner to destroy or retry
                    ws.host_identity = ""
                    self.held.record(ws, State.FAILED, f"deploying it again failed: {getattr(exc, 'message', exc)}")
                raise
            enforcement = self.backend.enforcement(handle)
            final = State.RUNNING if workspace.spec.start_on_create else State.READY
            self.held.record(ws, final, f"{kinds.name_of(workspace.spec.kind)} workspace on "
                             f"{self.backend.describe(handle)}"
                             + (", started" if final is State.RUNNING else ", ready, not started"),
                             enforcement=enforcement)
            return self.held.view(ws, enforcement)

    def _progress_reporter(self, ws: LocalWorkspace):
        """The progress callback handed to realise: the first call moves the workspace to
        PROPAGATING (on record, so a crash in the middle is undone at the next start); then the
        repository hears how far the copy has got, at most every PROGRESS_INTERVAL seconds."""
        last = {"sent": 0.0, "done": 0, "time": self._clock(), "rate": 0.0}

        def report(activity: str, done: int, total: int) -> None:
            now = self._clock()
            if ws.state is State.PENDING:
                self.held.record(ws, State.PROPAGATING, activity)
            elapsed = now - last["time"]
            if elapsed > 0.2:
                last["rate"] = (done - last["done"]) / elapsed if done >= last["done"] else 0.0
                last["time"], last["done"] = now, done
            if now - last["sent"] < PROGRESS_INTERVAL and done < total:
                return
            last["sent"] = now
            try:
                self.repository.progress(self.identity.name, ws.name, model.Progress(
                    activity, done, total, last["rate"], model.utcnow()))
            except Exception as exc:  # noqa: BLE001 - progress is best effort
                log.debug("progress report on %s not delivered: %s", ws.name, exc)
        return report

    def transition(self, name: str, action: Action, reason: str = "", force: bool = False) -> model.Workspace:
        """Start, stop, pause, resume, suspend, reboot or destroy, only along legal moves."""
        if action is Action.DESTROY:
            return self.destroy(name, reason)
        with self.held.lock(name):
            ws = self.held.require(name)
            target = self._check_move(ws, action)
            handle = ws.handle
            if action is Action.STOP:
                said = self.backend.stop(handle, force)
            else:
                said = getattr(self.backend, action.value)(handle)
            self.held.record(ws, target, said or _DONE[action])
            return self.held.view(ws)

    @staticmethod
    def _check_move(ws: LocalWorkspace, action: Action) -> State:
        """The state the action leads to; FailedPrecondition when the workspace's state does not allow it."""
        allowed, target = model.TRANSITIONS[action]
        if ws.state not in allowed:
            need = " or ".join(sorted(s.value for s in allowed))
            raise errors.FailedPrecondition(
                f"cannot {action.value} {ws.name}: it is {ws.state.value}; {action.value} needs {need}")
        return target

    def destroy(self, name: str, reason: str = "") -> model.Workspace:
        """Idempotent: a workspace this manager destroyed or no longer holds is answered
        TERMINATED; a destroy that overlaps one under way waits for it and answers so too."""
        names.parse_workspace_name(name)
        with self.held.lock(name):
            # Read under the lock: a destroy that held it before this one has removed the workspace.
            ws = self.state.get(name)
            if ws is None:
                return model.Workspace(name=name, spec=model.WorkspaceSpec(), state=State.TERMINATED,
                                       state_message="not on this manager")
            self._check_move(ws, Action.DESTROY)
            self.state.change(ws, State.TERMINATING, reason or "destroy requested")
            self.accounting.finalise(ws)
            self.backend.destroy(ws.handle)
            self.held.record(ws, State.TERMINATED, reason or "destroyed")
            return self.held.view(ws)

    def spawn(self, name: str, argv: list[str], environment: dict[str, str], working_directory: str
              ) -> subprocess.Popen:
        ws = self.held.require(name)
        if ws.state is not State.RUNNING:
            raise errors.FailedPrecondition(f"cannot exec in {name}: it is {ws.state.value}; exec needs RUNNING")
        exec_limits.check(argv, environment, working_directory, ws.spec.software.environment)
        env = {**ws.spec.software.environment, **environment}
        return self.backend.spawn(ws.handle, ExecOptions(list(argv), env, working_directory))

    # ------------------------------------------------------------- delivery
    def flush(self) -> int:
        return self.held.flush()

    # ------------------------------------------------------------- reconcile
    def reconcile(self) -> dict[str, list[str]]:
        """Makes the host, the local state and the repository agree. Runs at every start."""
        done: dict[str, list[str]] = {"undone": [], "orphans_removed": [], "vanished": [], "destroyed": [],
                                      "adopted": []}
        # 0. Migrations a restart cut short are finished or undone first: a guest in transit has
        # no domain here, which the host check below would call vanished.
        in_transit = set(self.migrations.reconcile()["unsettled"])
        # 1. Deploys interrupted by a crash are undone: their client got no answer and may retry.
        for ws in self.state.all():
            if ws.state in (State.PENDING, State.PROPAGATING):
                for hid, wid in self.backend.inventory().items():
                    if wid == ws.workspace_id:
                        self.backend.reclaim(hid)
                ws.host_identity = ""
                self.state.change(ws, State.FAILED, "the manager stopped during deploy; nothing was left on "
                                  "the host; destroy it and create it again", model.EventType.RECONCILED)
                done["undone"].append(ws.name)
        self.flush()
        # 2. The repository's view, when it answers.
        try:
            remote = {w.name: w for w in self.repository.workspaces_on(self.identity.name)}
        except Exception as exc:  # noqa: BLE001
            if not is_unreachable(exc):
                raise
            remote = None
            log.warning("repository unreachable: reconciling the host with local state only")
        local = {ws.name: ws for ws in self.state.all()}
        if remote is not None:
            for name, ws in list(local.items()):
                r = remote.get(name)
                if r is None:
                    r = self.repository.get(name)
                # A deploy whose answer a crash took: the factory placed it on another manager too.
                elsewhere = (r is not None and r.endpoint.manager not in ("", self.identity.name)
                             and name not in in_transit)
                if r is None or r.state in (State.TERMINATED, State.TERMINATING) or elsewhere:
                    why = ("its record is gone" if r is None else f"{r.endpoint.manager} holds it" if elsewhere
                           else f"the repository says {r.state.value}")
                    with self.held.lock(name):
                        ws = self.state.get(name)  # None: a client's destroy came first
                        if ws is not None:
                            self.accounting.finalise(ws)
                            self.backend.destroy(ws.handle)
                            # the record is another manager's: nothing to tell the repository of it
                            self.state.change(ws, State.TERMINATED, f"destroyed at reconciliation: {why}",
                                              model.EventType.RECONCILED, report=not elsewhere)
                            self.flush()
                    del local[name]
                    done["destroyed"].append(name)
            for name, r in remote.items():
                # One destroyed above is not taken back (as FAILED: no account) for its TERMINATING record.
                if name in local or name in done["destroyed"] or r.state in (State.PENDING, State.TERMINATED,
                                                                             State.FAILED):
                    continue
                # The repository places it here but this manager has no record of it (local state
                # lost): adopt it if its account is still on the host, otherwise it failed.
                wid = names.parse_workspace_name(name)
                hid = next((h for h, w in self.backend.inventory().items() if w == wid), "")
                ws = LocalWorkspace(name=name, spec=r.spec, state=r.state if hid else State.FAILED,
                                    host_identity=hid, owner=r.owner, labels=r.labels,
                                    termination_time=r.termination_time, create_time=r.create_time)
                self.state.insert(ws)
                if hid:
                    done["adopted"].append(name)
                else:
                    self.state.change(ws, State.FAILED, "this manager has no account for it (its local state "
                                      "was lost)", model.EventType.RECONCILED)
                    done["vanished"].append(name)
                local[name] = ws
            self._reconciled_with_repository = True
        # 3. The host against what this manager holds.
        held_ids = {ws.workspace_id for ws in local.values()}
        for hid, wid in self.backend.inventory().items():
            if wid not in held_ids:
                self.backend.reclaim(hid)
                done["orphans_removed"].append(hid)
        for ws in local.values():
            if ws.state in (State.FAILED,) or not ws.host_identity or ws.name in in_transit:
                continue
            if not self.backend.exists(ws.handle):
                self.state.change(ws, State.FAILED, f"its {self.backend.describe(ws.handle)} vanished from "
                                  "the host while the manager was not watching", model.EventType.RECONCILED)
                self.accounting.finalise(ws, locked=False)
                done["vanished"].append(ws.name)
                continue
            # After a host restart its cgroups, filesystem mount and sandbox are gone: put them back.
            running = ws.state in (State.RUNNING, State.PAUSED)
            try:
                restored = self.backend.restore(ws.handle, ws.spec, running)
            except errors.VwsError as exc:
                self.state.change(ws, State.FAILED, f"could not be restored on the host: {exc.message}",
                                  model.EventType.RECONCILED)
                self.accounting.finalise(ws, locked=False)
                done["vanished"].append(ws.name)
                continue
            if restored:
                self.state.change(ws, ws.state, "restored on the host after it restarted: " + ", ".join(restored),
                                  model.EventType.RECONCILED)
                done.setdefault("restored", []).append(ws.name)
        self.flush()
        if any(done.values()):
            log.info("reconciled: %s", {k: v for k, v in done.items() if v})
        return done

    # ------------------------------------------------------------- background
    def info(self) -> model.ManagerInfo:
        return model.ManagerInfo(
            name=self.identity.name, address=self.identity.address, kinds=sorted(self.backend.kinds, key=lambda k: k.value),
            backend=self.backend.name, capacity=self.backend.capacity(), allocated=self.held.allocated(),
            heartbeat_interval=model.dt.timedelta(seconds=self.identity.heartbeat_interval),
            account_pool=self.backend.account_pool)

    def heartbeat_once(self) -> bool:
        """One heartbeat (registering first if needed). True when the repository answered."""
        try:
            if not self._registered:
                self.repository.register(self.info())
                self._registered = True
            elif not self.repository.heartbeat(self.identity.name, self.held.allocated()):
                self._registered = False
                self.repository.register(self.info())
                self._registered = True
        except Exception as exc:  # noqa: BLE001
            if is_unreachable(exc):
                return False
            raise
        self.flush()
        if not self._reconciled_with_repository:
            self.reconcile()
        elif self.migrations.unsettled:
            self.migrations.reconcile(self.migrations.unsettled)  # the repository answers again
        return True

    def _loop(self, interval: float, body: Callable[[], object], what: str) -> None:
        while not self._stop.wait(interval):
            try:
                body()
            except Exception:  # noqa: BLE001 - a background loop must outlive one bad round
                log.exception("%s failed; retrying in %.1fs", what, interval)

    def start_background(self) -> None:
        loops = [(self.identity.heartbeat_interval, self.heartbeat_once, "heartbeat"),
                 (1.0, self.backend.maintain, "backend maintenance")]
        if self.accounting.interval > 0:
            loops.append((self.accounting.interval, self.accounting.run_once, "usage accounting"))
        for interval, body, what in loops:
            t = threading.Thread(target=self._loop, args=(interval, body, what), daemon=True, name=what)
            t.start()
            self._threads.append(t)

    def stop_background(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
