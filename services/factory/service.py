"""The factory's service layer: admit a request, record it, place it on a manager with room,
have that manager deploy it, and hand back the endpoint reference.

The record is written before anything else happens, under the client's request id, so that a
retried request finds it and carries on instead of making a second workspace; a request that
fails leaves no record behind (the manager undoes its own host changes)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from typing import Callable, Protocol

from ..common import converters, errors, kinds, model, names, units
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from ..common.model import UNFINISHED, State
from .validation import AUTO_REQUEST_ID, Limits, admit, boots_image, check_request_id, fit_image

log = logging.getLogger("vws.factory")
# A record in these has been destroyed, or is being: nothing to answer a create with.
GONE = (State.TERMINATING, State.TERMINATED)

# A manager's refusals after which the next manager is worth trying. Not DEADLINE_EXCEEDED: a
# set-up script that outlasted one manager's limit would outlast the next one's.
TRY_NEXT = (errors.ResourceExhausted, errors.Unavailable, errors.Unimplemented)
# The longest the factory waits for one manager's deploy (ManagerGateway.deploy raises
# StillDeploying after it); above the managers' setup_timeout.
DEPLOY_TIMEOUT = 300.0


class RecordGateway(Protocol):
    """The repository as the factory uses it (vws.repository.client in production, a fake in
    unit tests). Errors are domain errors."""

    def create_record(self, request_id: str, workspace: model.Workspace, caller: Caller = PLAIN_TEXT_CALLER
                      ) -> tuple[model.Workspace, bool]: ...
    def assign(self, name: str, endpoint: model.Endpoint) -> model.Workspace: ...
    def delete_record(self, name: str, reason: str) -> None: ...
    def managers(self) -> list[model.ManagerInfo]: ...
    def unfinished(self) -> list[model.Workspace]: ...  # in UNFINISHED
    def get_image(self, name: str) -> model.Image: ...  # errors.NotFound when it is not there
    def get(self, name: str) -> model.Workspace | None: ...


class ManagerGateway(Protocol):
    def deploy(self, address: str, workspace: model.Workspace) -> model.Workspace: ...  # refusals: domain errors
    # TERMINATED when it holds nothing of that name; errors.Unavailable when it cannot be reached.
    def destroy(self, address: str, name: str, reason: str) -> model.Workspace: ...


class StillDeploying(errors.DeadlineExceeded):
    """A manager's deploy outlasted the time the factory waits for it (ManagerGateway.deploy
    raises it): the manager carries on, so the record stays for it to finish into."""


@dataclasses.dataclass
class Refusal:
    manager: str
    reason: str


def customise(workspace: model.Workspace, caller: Caller) -> model.Workspace:
    """The caller owns it; their policy's default environment variables go under the request's
    own, its default image is booted when the request names none, and its account joins the
    policy's Unix group (which only the policy sets)."""
    if workspace.spec.software.unix_group:
        raise errors.InvalidArgument("is set by the site's policy from your attributes, not by a request; leave it "
                                     "empty (vws whoami shows yours)", "workspace.spec.software.unix_group")
    if caller.principal is not None:
        workspace = dataclasses.replace(workspace, owner=caller.identity)
    c = getattr(caller.entitlement, "customisation", None)
    if c is None:
        return workspace
    software = dataclasses.replace(workspace.spec.software, environment={**c.environment,
                                                                         **workspace.spec.software.environment},
                                   unix_group=c.unix_group)
    if c.image and not software.image and boots_image(workspace.spec.kind):
        software.image = c.image
    # Placement reads the account pool from it; the repository records its own decision.
    return dataclasses.replace(workspace, spec=dataclasses.replace(workspace.spec, software=software),
                               customisation=converters.customisation_from_pb(c))


def free_room(m: model.ManagerInfo) -> model.Capacity:
    return m.capacity.minus(m.allocated)


def shortfall(m: model.ManagerInfo, spec: model.WorkspaceSpec, account_pool: str = "") -> str:
    """Why this manager cannot take the workspace, or '' when it can. `account_pool`: the
    pool the site's policy puts it in (model.Workspace.account_pool)."""
    if m.state is not model.ManagerState.AVAILABLE:
        return f"{m.state.value.lower()}: no heartbeat since {m.heartbeat_time:%H:%M:%S}" if m.heartbeat_time \
            else "not heard from"
    if spec.kind not in m.kinds:
        return f"does not offer {kinds.name_of(spec.kind)} workspaces"
    if account_pool and m.account_pool != account_pool:
        return (f"leases from {'account pool ' + m.account_pool if m.account_pool else 'no account pool'}; the site's "
                f"policy puts your workspaces in pool {account_pool}")
    free, r = free_room(m), spec.resources
    short = m.capacity.short(m.allocated, model.Capacity.of(spec))
    if "workspaces" in short:
        return f"all {m.capacity.workspaces} workspaces in use"
    size, millis = units.format_size, (lambda v: f"{v}m")
    for what, need, have, total, fmt in (
            ("memory", r.memory_bytes, free.memory_bytes, m.capacity.memory_bytes, size),
            ("disk", r.disk_bytes, free.disk_bytes, m.capacity.disk_bytes, size),
            ("cpu", r.cpu_millis, free.cpu_millis, m.capacity.cpu_millis, millis)):
        if what in short:
            return f"{what}: {fmt(need)} wanted, {fmt(max(have, 0))} free of {fmt(total)}"
    return ""


def rank(candidates: list[model.ManagerInfo]) -> list[model.ManagerInfo]:
    """Spread load: the manager with the largest share of its workspace slots free first."""
    def key(m: model.ManagerInfo):
        free = free_room(m)
        return (-(free.workspaces / max(m.capacity.workspaces, 1)), m.name)
    return sorted(candidates, key=key)


class WorkspaceFactory:
    def __init__(self, limits: Limits, records: RecordGateway, managers: ManagerGateway,
                 repository_address: str = "", clock: Callable[[], dt.datetime] = model.utcnow,
                 deploy_wait: dt.timedelta = dt.timedelta(seconds=DEPLOY_TIMEOUT + 60)):
        """`deploy_wait`: after how long without a change no factory can be waiting for a deploy
        of a record (each wait, DEPLOY_TIMEOUT, follows its record's creation or placement)."""
        self.limits, self.records, self.managers = limits, records, managers
        self.deploy_wait = deploy_wait
        self.repository_address = repository_address
        self._clock = clock
        self._inflight: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry: tuple[float, list[model.ManagerInfo]] = (-1e9, [])
        self._registry_lock = threading.Lock()

    # The registry is read once per REGISTRY_TTL, not once per create; between reads the factory
    # counts its own placements into it, and a manager's own admission check has the last word.
    REGISTRY_TTL = 1.0

    def _managers(self, fresh: bool = False) -> list[model.ManagerInfo]:
        with self._registry_lock:
            at, cached = self._registry
            if fresh or time.monotonic() - at > self.REGISTRY_TTL:
                cached = self.records.managers()
                self._registry = (time.monotonic(), cached)
            return [dataclasses.replace(m, allocated=dataclasses.replace(m.allocated)) for m in cached]

    def _count_placement(self, manager: str, spec: model.WorkspaceSpec) -> None:
        with self._registry_lock:
            for m in self._registry[1]:
                if m.name == manager:
                    m.allocated = m.allocated.plus(model.Capacity.of(spec))

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._inflight.setdefault(key, threading.Lock())

    # ------------------------------------------------------------------ create
    def create(self, request_id: str, workspace: model.Workspace, kind_known: bool = True,
               caller: Caller = PLAIN_TEXT_CALLER) -> model.Workspace:
        """`caller`: who asks (the gate's); they own it, and the site's policy customises it
        for them here and decides on it, with their quota, when it is recorded."""
        check_request_id(request_id)
        workspace = customise(workspace, caller)
        admitted = admit(workspace, self.limits, kind_known)
        if boots_image(admitted.spec.kind):
            admitted = fit_image(admitted, workspace.spec.resources, self._image(admitted.spec.software.image),
                                 self.limits)
        request_id = request_id or f"{AUTO_REQUEST_ID}{uuid.uuid4()}"
        now = self._clock()
        admitted = dataclasses.replace(admitted, name=names.workspace_name(names.new_workspace_id()),
                                       state=State.PENDING, create_time=now,
                                       termination_time=now + admitted.spec.lifetime, request_id=request_id)
        # The first choice of manager travels with the record, saving a round trip to assign it.
        first = next(iter(self._candidates(admitted, self._managers())[0]), None)
        if first is not None:
            admitted.endpoint = model.Endpoint(admitted.name, first.name, first.address)
        with self._lock("request:" + request_id):
            record, created = self.records.create_record(request_id, admitted, caller)
            if not created and record.state not in UNFINISHED:
                log.info("request %s retried: returning %s (%s)", request_id, record.name, record.state.value)
                return record
            return self._drive(record)

    def _image(self, name: str) -> model.Image | None:
        try:
            return self.records.get_image(name)
        except errors.NotFound:
            return None  # fit_image answers for it, as for an image not the owner's to boot

    def _drive(self, record: model.Workspace) -> model.Workspace:
        """Places a PENDING record and has its manager deploy it; on failure removes the record."""
        with self._lock(record.name):
            try:
                return self._place(record)
            except StillDeploying as exc:
                if record.request_id.startswith(AUTO_REQUEST_ID):
                    raise errors.DeadlineExceeded(
                        f"{exc.message}; sent without a request_id, {record.name} cannot be asked for again and "
                        "is undone: create it anew with a request_id (vws create sends one)") from None
                # Driven to its end with its record: the manager reports it there, a retry with the
                # same request_id (or the resume loop) answers with it.
                raise errors.DeadlineExceeded(
                    f"{exc.message}; {record.name} stays on record and is finished there: retry with the same "
                    "request_id to have it") from None
            except BaseException as exc:
                if record.state is State.FAILED:
                    raise  # it stays on record, FAILED, for its owner to retry or destroy
                try:
                    self.records.delete_record(record.name, f"create failed: {getattr(exc, 'message', exc)}")
                except Exception:  # noqa: BLE001 - the resume loop finds it again
                    log.exception("could not remove the record of failed create %s", record.name)
                raise

    @staticmethod
    def _candidates(record: model.Workspace, managers: list[model.ManagerInfo]
                    ) -> tuple[list[model.ManagerInfo], list[Refusal]]:
        refusals: list[Refusal] = []
        held = [m for m in managers if m.name == record.endpoint.manager]
        candidates = []
        for m in managers:
            if m.name == record.endpoint.manager:
                continue
            why = shortfall(m, record.spec, record.account_pool)
            if why:
                refusals.append(Refusal(m.name, why))
            else:
                candidates.append(m)
        # A record already assigned (a retried or resumed create) goes back to its manager first.
        return held + rank(candidates), refusals

    def _place(self, record: model.Workspace) -> model.Workspace:
        managers = self._managers()
        candidates, refusals = self._candidates(record, managers)
        if not candidates:
            managers = self._managers(fresh=True)  # the cached view may be stale: look again
            candidates, refusals = self._candidates(record, managers)
        if record.state is State.FAILED:
            # A create a manager's crash cut short: that manager holds it, and its room, and deploys
            # it again; another would leave it held twice.
            candidates = [m for m in candidates if m.name == record.endpoint.manager]
        unreachable: list[str] = []
        for m in candidates:
            endpoint = model.Endpoint(record.name, m.name, m.address)
            if (record.endpoint.manager, record.endpoint.manager_address) == (m.name, m.address):
                assigned = record
            else:
                try:
                    assigned = self.records.assign(record.name, endpoint)
                except errors.FailedPrecondition:
                    made = self._made(record)
                    if made is None:
                        raise
                    return made
            try:
                deployed = self.managers.deploy(m.address, assigned)
            except TRY_NEXT as exc:
                refusals.append(Refusal(m.name, f"{exc.grpc_status_code.name}: {exc.message}"))
                log.info("manager %s refused %s: %s", m.name, record.name, refusals[-1].reason)
                if isinstance(exc, errors.Unavailable):
                    unreachable.append(m.name)
                continue
            if deployed.state is State.FAILED:
                raise errors.FailedPrecondition(
                    f"{record.name} failed on {m.name}: {deployed.state_message}; destroy it and create it anew")
            self._count_placement(m.name, record.spec)
            return dataclasses.replace(deployed, request_id=record.request_id,
                                       customisation=record.customisation,
                                       endpoint=dataclasses.replace(deployed.endpoint, workspace=record.name))
        if record.state is State.FAILED:
            raise errors.Unavailable(
                f"{record.name} failed during its create on {record.endpoint.manager or 'no manager'}, which alone can "
                "deploy it again and did not: " + ("; ".join(r.reason for r in refusals if r.manager == record.endpoint.manager)
                                                  or "it is not registered")
                + "; retry later with the same request_id, or destroy it and create it anew")
        if not managers:
            raise errors.ResourceExhausted(
                "no manager has registered with the repository; start one (vws manager) or wait for it",
                [("managers", "none registered")])
        if unreachable:
            made = self._made(record)
            if made is not None:
                return made
        away = unreachable + [m.name for m in managers if m.state is model.ManagerState.UNREACHABLE]
        if refusals and all(r.manager in away for r in refusals):
            raise errors.Unavailable(  # not a lack of room: a retry with the same request_id may succeed
                f"no manager could be reached for this workspace: "
                + "; ".join(f"{r.manager}: {r.reason}" for r in refusals) + "; retry with the same request_id")
        raise errors.ResourceExhausted(
            f"no manager has room for this {kinds.name_of(record.spec.kind)} workspace: "
            + "; ".join(f"{r.manager}: {r.reason}" for r in refusals),
            [(r.manager, r.reason) for r in refusals])

    def _made(self, record: model.Workspace) -> model.Workspace | None:
        """The workspace as a manager tried before made it and reported it, its answer lost (a
        crash, a cut link); None when no manager has made it."""
        made = self.records.get(record.name)
        if made is None or made.state in UNFINISHED or made.state in GONE:
            return None
        log.info("%s was made on %s, whose answer was lost", record.name, made.endpoint.manager)
        return dataclasses.replace(made, request_id=record.request_id, customisation=record.customisation)

    # ------------------------------------------------------------------ resume
    def resume_once(self, older_than: dt.timedelta) -> list[str]:
        """Drives on creations left unfinished by a factory that stopped (or a client that gave
        up), older than `older_than`, as a retry would. One a manager has taken (PROPAGATING, or
        FAILED by its crash) waits until no factory can still be waiting for its deploy, and so
        does one sent without a request id, which is undone instead: no client can ask for it."""
        done = []
        for record in self.records.unfinished():
            now = self._clock()
            if record.create_time and now - record.create_time < older_than:
                continue
            if record.state is State.FAILED and record.endpoint.host_identity:
                continue  # it was made, and failed later: not a create cut short; its owner destroys it
            unanswerable = record.request_id.startswith(AUTO_REQUEST_ID)
            quiet = now - (record.update_time or record.create_time or now)
            if (unanswerable or record.state is not State.PENDING) and quiet < self.deploy_wait:
                continue  # the factory that took it may be waiting on its manager still
            lock = self._lock(record.name)
            if not lock.acquire(blocking=False):
                continue  # being driven right now
            lock.release()
            try:
                if unanswerable:
                    self._undo(record)
                else:
                    self._drive(record)
                done.append(record.name)
            except errors.VwsError as exc:
                log.warning("resuming %s did not finish it: %s", record.name, exc.message)
        return done

    def _undo(self, record: model.Workspace) -> None:
        """Destroys what its manager holds of an unfinished create (waiting for a deploy under way
        there), then removes its record; a record the destroy ended (TERMINATED) stays."""
        reason = "undone: created without a request_id and cut short before the factory could answer"
        if record.endpoint.manager_address:
            self.managers.destroy(record.endpoint.manager_address, record.name, reason)
        try:
            self.records.delete_record(record.name, reason)
        except errors.NotFound:
            pass
        except errors.FailedPrecondition as exc:  # TERMINATED by the destroy's report, as a destroyed workspace
            log.info("the record of %s stays: %s", record.name, exc.message)
        log.info("undid %s (request %s): %s", record.name, record.request_id, reason)

    def start_background(self, interval: float) -> None:
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.resume_once(dt.timedelta(seconds=max(interval, 30.0)))
                except Exception as exc:  # noqa: BLE001 - a background loop must outlive one bad round
                    if isinstance(exc, errors.VwsError):  # from the repository's listing
                        log.info("repository unreachable; resuming later")
                    else:
                        log.exception("resuming unfinished creates failed")
        self._thread = threading.Thread(target=loop, daemon=True, name="resume")
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ info
    def site_info(self) -> dict:
        managers = self._managers(fresh=True)
        available = [m for m in managers if m.state is model.ManagerState.AVAILABLE]
        offers = []
        for kind in kinds.TABLE:  # every kind the table describes is implemented
            offering = [m for m in available if kind in m.kinds]
            if not offering:
                offers.append((kind, False, "no available manager offers it right now"))
            else:
                free = sum(max(free_room(m).workspaces, 0) for m in offering)
                offers.append((kind, free > 0, f"{free} free on {len(offering)} manager(s)" if free
                               else "every manager offering it is full"))
        return {"kinds": offers, "limits": self.limits, "available_managers": len(available),
                "repository_address": self.repository_address}

