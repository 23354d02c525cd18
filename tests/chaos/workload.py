"""The clients of a chaos round: each drives its own workspaces through the real services
(creates through the factory, destroys through the repository, pauses, resumes and execs
through the workspace's manager) and keeps, for each, the states the repository may show once
everything has settled: what the answers acknowledged, widened by every answer that did not
come. A create and a destroy are retried with the same request until they are answered, as a
client would."""
from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time
import uuid

import grpc

from vws.common import clients
from vws.v1 import factory_pb2, manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
MiB = 1024 ** 2
# Answers that say nothing of what happened: the service died or was away; ask again.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}
CALL_TIMEOUT = 30.0
KINDS = [workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT] * 3 + [workspace_pb2.WorkspaceSpec.KIND_SANDBOX]


@dataclasses.dataclass
class Tracked:
    """A workspace a client was answered for, and the states its record may settle in."""
    name: str
    request_id: str
    manager_address: str
    allowed: set[int]
    history: list[str] = dataclasses.field(default_factory=list)  # what was asked, and the answers

    def note(self, what: str) -> None:
        self.history.append(what)


@dataclasses.dataclass
class Create:
    """One create, with every attempt of its request."""
    request_id: str
    attempts: int = 0
    code: str = ""             # the last answer's status code
    name: str = ""             # the workspace answered, for an OK
    state: int = 0             # its state in that answer
    message: str = ""

    @property
    def retried(self) -> bool:
        return self.attempts > 1


class Figures:
    """Operations by outcome, shared by the clients of every round."""

    def __init__(self):
        self.lock = threading.Lock()
        self.operations: collections.Counter = collections.Counter()  # (operation, status code)
        self.examples: dict[tuple[str, str], str] = {}  # the first message of each refusal

    def count(self, operation: str, code: str, message: str = "") -> None:
        with self.lock:
            self.operations[(operation, code)] += 1
            if message:
                self.examples.setdefault((operation, code), message[:200])


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN


class Client:
    """One client thread: random operations on its own workspaces until told to stop."""

    def __init__(self, index: int, stack, rng: random.Random, figures: Figures, owned: list[Tracked],
                 converge_bound: float, population: int):
        self.index, self.stack, self.rng, self.figures = index, stack, rng, figures
        self.owned = owned                   # live workspaces (not destroyed)
        self.gone: list[Tracked] = []        # destroyed this round: their records must end TERMINATED
        self.creates: list[Create] = []
        self.converge_bound = converge_bound
        self.population = population
        self.errors: list[str] = []          # what the client itself could not make sense of
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"chaos client {index}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._one()
                self._stop.wait(self.rng.uniform(0.0, 0.2))
        except Exception as exc:  # noqa: BLE001 - reported as the round's finding
            self.errors.append(f"client {self.index} stopped: {type(exc).__name__}: {exc}")

    def _one(self) -> None:
        running = [t for t in self.owned if t.allowed == {W.STATE_RUNNING}]
        paused = [t for t in self.owned if W.STATE_PAUSED in t.allowed]
        choices = []
        if len(self.owned) < self.population:
            choices += [self.create] * 3
        if self.owned:
            choices += [self.destroy] * 2
        if running:
            choices += [self.pause, self.execute, self.execute]
        if paused:
            choices += [self.resume] * 2
        self.rng.choice(choices)()

    def _retrying(self, call, started: float):
        """call() until it is answered with something other than RETRYABLE, or the bound passes:
        (response or None, last status code, its message, attempts)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return call(), grpc.StatusCode.OK, "", attempts
            except grpc.RpcError as exc:
                code = code_of(exc)
                if code not in RETRYABLE or time.monotonic() - started > self.converge_bound:
                    return None, code, exc.details() or "", attempts
            time.sleep(self.rng.uniform(0.1, 0.4))

    # ------------------------------------------------------------------ operations
    def create(self) -> None:
        rid = str(uuid.UUID(int=self.rng.getrandbits(128)))
        spec = workspace_pb2.WorkspaceSpec(
            kind=self.rng.choice(KINDS), resources=workspace_pb2.ResourceAllocation(disk_bytes=16 * MiB))
        if self.rng.random() < 0.3:  # a longer deploy: a kill meets it half done more often
            spec.software.setup_script = f"sleep {self.rng.choice([0.3, 0.8])}"
        request = factory_pb2.CreateWorkspaceRequest(
            request_id=rid, workspace=W(spec=spec, owner="chaos", labels={"chaos": str(self.index)}))
        record = Create(rid)
        self.creates.append(record)
        response, code, message, record.attempts = self._retrying(
            lambda: clients.factory(self.stack.factory.address).CreateWorkspace(request, timeout=CALL_TIMEOUT),
            time.monotonic())
        record.code, record.message = code.name, message
        self.figures.count("create", code.name, message)
        if response is None:
            self._stop.wait(self.rng.uniform(0.3, 0.8))  # refused (no room, no manager): not at once again
            return
        ws = response.workspace
        record.name, record.state = ws.name, ws.state
        if ws.state in (W.STATE_FAILED, W.STATE_TERMINATED, W.STATE_TERMINATING):
            return  # judged by the round (answered OK with a workspace that is not there)
        t = Tracked(ws.name, rid, ws.endpoint.manager_address, {ws.state}, [f"create OK {W.State.Name(ws.state)}"])
        self.owned.append(t)

    def destroy(self) -> None:
        t = self.rng.choice(self.owned)
        _, code, message, _ = self._retrying(
            lambda: clients.repository(self.stack.repository.address).DeleteWorkspace(
                repository_pb2.DeleteWorkspaceRequest(name=t.name), timeout=CALL_TIMEOUT), time.monotonic())
        self.figures.count("destroy", code.name, message)
        t.note(f"destroy {code.name}")
        if code == grpc.StatusCode.OK:
            self.owned.remove(t)
            t.allowed = {W.STATE_TERMINATED}
            self.gone.append(t)
        elif code in RETRYABLE:
            t.allowed |= {W.STATE_TERMINATED, W.STATE_TERMINATING}

    def _manager(self, t: Tracked):
        return clients.manager(t.manager_address)

    def _transition(self, t: Tracked, operation: str, call, source: int, target: int) -> None:
        """A pause or resume: OK acknowledges the target; no answer widens what may be; a refusal
        (FAILED_PRECONDITION: it was not in the source state) narrows it."""
        try:
            call(timeout=CALL_TIMEOUT)
            code, message = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, message = code_of(exc), exc.details() or ""
        self.figures.count(operation, code.name, message)
        t.note(f"{operation} {code.name}")
        if code == grpc.StatusCode.OK:
            t.allowed = {target}
        elif code in RETRYABLE:
            t.allowed |= {target}
        elif code == grpc.StatusCode.FAILED_PRECONDITION and len(t.allowed) > 1:
            t.allowed -= {source}

    def pause(self) -> None:
        t = self.rng.choice([t for t in self.owned if t.allowed == {W.STATE_RUNNING}])
        self._transition(t, "pause", lambda timeout: self._manager(t).PauseWorkspace(
            manager_pb2.PauseWorkspaceRequest(name=t.name), timeout=timeout), W.STATE_RUNNING, W.STATE_PAUSED)

    def resume(self) -> None:
        t = self.rng.choice([t for t in self.owned if W.STATE_PAUSED in t.allowed])
        self._transition(t, "resume", lambda timeout: self._manager(t).ResumeWorkspace(
            manager_pb2.ResumeWorkspaceRequest(name=t.name), timeout=timeout), W.STATE_PAUSED, W.STATE_RUNNING)

    def execute(self) -> None:
        t = self.rng.choice([t for t in self.owned if t.allowed == {W.STATE_RUNNING}])
        outcome = exec_true(t.manager_address, t.name)
        self.figures.count("exec", outcome or "OK")


def exec_true(manager_address: str, name: str, timeout: float = CALL_TIMEOUT) -> str:
    """'' when `true` runs in the workspace and exits 0, else what happened (a status code's
    name, or `exit N`)."""
    def requests():
        yield manager_pb2.ExecRequest(name=name, argv=["true"], close_stdin=True)
    try:
        for msg in clients.manager(manager_address).Exec(requests(), timeout=timeout):
            if msg.WhichOneof("output") == "exit_status":
                return "" if msg.exit_status.code == 0 else f"exit {msg.exit_status.code}"
    except grpc.RpcError as exc:
        return code_of(exc).name
    return "no exit status"
