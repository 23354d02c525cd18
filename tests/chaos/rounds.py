"""A chaos run: one stack (a repository, a factory, a manager of dynamic accounts and one of an
account pool, both also offering sandboxes), and rounds in which clients work while services are
killed with SIGKILL at random moments and started again on the same address. After each round
everything settles and the invariants are checked against the repository's records and the host:

  orphan        something on the host (account, lease, cgroup, mount, sandbox, domain) whose
                workspace has no record, a TERMINATED one, or one on another manager
  no host state a record READY/RUNNING/PAUSED/SUSPENDED without its account or cgroup, a RUNNING
                one frozen or where `true` does not run, a PAUSED one not frozen
  stuck         a record still PENDING/PROPAGATING/TERMINATING/MIGRATING after the bound
  lost          an acknowledged create, destroy, pause or resume not reflected by the record
  not converged a create answered OK with a workspace that is FAILED or does not work, still
                unanswered after the bound, answered an error while its workspace lives, or
                two records for one request_id

Each finding names the seed and round; VWS_CHAOS_SEED replays the run's random choices (the
moments of the kills relative to the operations vary with the machine's speed)."""
from __future__ import annotations

import collections
import pathlib
import random
import signal
import time

import grpc

from vws.common import clients
from vws.v1 import repository_pb2, workspace_pb2

from tests.chaos import host
from tests.chaos.workload import CALL_TIMEOUT, RETRYABLE, Client, Figures, Tracked, exec_true
from tests.integration.stack import Process, Stack

W = workspace_pb2.Workspace
TRANSITIONAL = {W.STATE_PENDING, W.STATE_PROPAGATING, W.STATE_TERMINATING, W.STATE_MIGRATING}
HOLDING = {W.STATE_READY, W.STATE_RUNNING, W.STATE_PAUSED, W.STATE_SUSPENDED}
TARGETS = ["repository", "factory", "m0", "m1", "all"]
KINDS = ("orphan", "no host state", "stuck", "lost", "not converged")
CLIENTS, POPULATION = 2, 3  # client threads, and the live workspaces each keeps at most


def state_name(state: int) -> str:
    return W.State.Name(state).removeprefix("STATE_")


class Chaos:
    def __init__(self, root: pathlib.Path, seed: int, settle_bound: float = 60.0, converge_bound: float = 60.0):
        self.seed, self.settle_bound, self.converge_bound = seed, settle_bound, converge_bound
        self.stack = Stack(root)
        try:
            self.stack.start(0)
            self.stack.add_manager("m0")
            self.stack.add_manager("m1", backend="account-pool", pool_size=4)
        except BaseException:
            self.stack.close()
            raise
        for p in self.processes().values():
            pin(p)
        self.figures = Figures()
        self.kills: collections.Counter = collections.Counter()
        self.findings: dict[str, list[str]] = {k: [] for k in KINDS}
        self.owned: list[list[Tracked]] = [[] for _ in range(CLIENTS)]
        self.rounds = 0
        self.retried = self.retried_converged = self.creates = 0
        self._seen: set[tuple[str, str]] = set()

    def processes(self) -> dict[str, Process]:
        return {"repository": self.stack.repository, "factory": self.stack.factory,
                **{n: p for n, p in self.stack.managers.items()}}

    # ------------------------------------------------------------------ one round
    def round(self, number: int) -> list[str]:
        """Runs round `number` and returns its new findings."""
        rng = random.Random(f"{self.seed}:{number}")
        before = {k: len(v) for k, v in self.findings.items()}
        workers = [Client(i, self.stack, random.Random(f"{self.seed}:{number}:{i}"), self.figures, self.owned[i],
                          self.converge_bound, POPULATION) for i in range(CLIENTS)]
        duration = rng.uniform(2.5, 5.0)
        plan = sorted((rng.uniform(0.1, duration), rng.choice(TARGETS), rng.uniform(0.0, 1.5))
                      for _ in range(rng.choice([1, 1, 2])))
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for at, target, down in plan:
            time.sleep(max(0.0, at - (time.monotonic() - t0)))
            self.kill(target, rng)
            time.sleep(down)
            self.restart(target)
        time.sleep(max(0.0, duration - (time.monotonic() - t0)))
        for w in workers:
            w.stop()
        for w in workers:
            if not w.join(self.converge_bound + 2 * CALL_TIMEOUT + 30):
                self.find(number, "stuck", f"client {w.index} did not finish its operation")
            for e in w.errors:
                self.find(number, "lost", e)
        self.settle(number, workers)
        self.rounds += 1
        return [f for k in KINDS for f in self.findings[k][before[k]:]]

    def kill(self, target: str, rng: random.Random) -> None:
        victims = list(self.processes()) if target == "all" else [target]
        rng.shuffle(victims)
        for name in victims:
            self.processes()[name].kill(signal.SIGKILL)
            self.kills[name] += 1
        if target == "all":
            self.kills["all at once"] += 1

    def restart(self, target: str) -> None:
        names = list(self.processes()) if target == "all" else [target]
        for name in names:  # the repository first: the others find it at their start
            self.processes()[name].start()

    def find(self, number: int, kind: str, text: str) -> None:
        """Records a finding once (a thing left on the host is found again every round)."""
        if (kind, text) in self._seen:
            return
        self._seen.add((kind, text))
        self.findings[kind].append(f"seed {self.seed} round {number}: {text}")

    # ------------------------------------------------------------------ settling
    def records(self) -> list[W]:
        return list(clients.listed(clients.repository(self.stack.repository.address).ListWorkspaces,
                                   repository_pb2.ListWorkspacesRequest(states=[s for s in W.State.values() if s]),
                                   "workspaces"))

    def unsettled(self, records: list[W]) -> dict[str, list[str]]:
        """What does not agree yet: records in motion, host things without their record,
        records without their host things, managers not available."""
        by_name = {w.name: w for w in records}
        found: dict[str, list[str]] = {k: [] for k in KINDS}
        found["stuck"] += [f"{w.name} {state_name(w.state)} ({w.state_message[:120]})"
                           for w in records if w.state in TRANSITIONAL]
        listed = clients.repository(self.stack.repository.address).ListManagers(
            repository_pb2.ListManagersRequest(), timeout=10).managers
        available = {m.name for m in listed if m.state == workspace_pb2.Manager.STATE_AVAILABLE}
        found["stuck"] += [f"{self.stack.manager_name(n)} not AVAILABLE" for n in self.stack.managers
                           if self.stack.manager_name(n) not in available]
        things = host.everything(self.stack)
        for t in things:
            w = by_name.get(t.workspace)
            if not t.workspace or (w is not None and w.state in TRANSITIONAL):
                continue
            if w is None or w.state == W.STATE_TERMINATED or w.endpoint.manager != t.manager:
                held = "no record" if w is None else f"{state_name(w.state)} on {w.endpoint.manager or 'none'}"
                found["orphan"].append(f"{t} [record: {held}]")
        for w in records:
            if w.state not in HOLDING:
                continue
            mine = {t.what for t in things if t.workspace == w.name and t.manager == w.endpoint.manager}
            lacks = [what for what, ok in (("account", mine & {"account", "lease"}), ("cgroup", "cgroup" in mine)) if not ok]
            if "account" in mine and "mount" not in mine:
                lacks.append("mount")
            if lacks:
                found["no host state"].append(f"{w.name} {state_name(w.state)} on {w.endpoint.manager} has no "
                                              + ", ".join(lacks))
            elif w.state in (W.STATE_RUNNING, W.STATE_PAUSED):
                frozen = host.frozen(w.endpoint.manager, w.name)
                if frozen != (w.state == W.STATE_PAUSED):
                    found["no host state"].append(f"{w.name} {state_name(w.state)} but its cgroup is "
                                                  + ("frozen" if frozen else "not frozen"))
        return found

    def settle(self, number: int, workers: list[Client]) -> None:
        """Waits (up to the bound) until records and host agree, then checks the invariants."""
        deadline = time.monotonic() + self.settle_bound
        while True:
            try:
                records = self.records()
                found = self.unsettled(records)
            except grpc.RpcError as exc:
                records, found = [], {"stuck": [f"the repository answers {exc.code().name}"]}
            if not any(found.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        for kind, texts in found.items():
            for text in texts:
                self.find(number, kind, text + (f" after {self.settle_bound:.0f}s" if kind == "stuck" else ""))
        self.check(number, records, workers)

    # ------------------------------------------------------------------ invariants
    def check(self, number: int, records: list[W], workers: list[Client]) -> None:
        by_name = {w.name: w for w in records}
        broken: set[str] = set()
        for w in workers:
            for t in w.owned + w.gone:
                r = by_name.get(t.name)
                if r is None or r.state not in t.allowed:
                    shown = "no record" if r is None else state_name(r.state)
                    self.find(number, "lost", f"{t.name} is {shown}, acknowledged "
                              f"{'/'.join(sorted(state_name(s) for s in t.allowed))} ({'; '.join(t.history)})")
                    broken.add(t.name)
                    continue
                t.allowed = {r.state}
                if r.state == W.STATE_RUNNING:
                    why = exec_true(t.manager_address, t.name)
                    if why:
                        self.find(number, "no host state", f"{t.name} RUNNING but `true` in it: {why}")
                        broken.add(t.name)
        by_request = collections.defaultdict(list)
        for r in records:
            by_request[r.request_id].append(r)
        for w in workers:
            for c in w.creates:
                self.creates += 1
                made = by_request.get(c.request_id, [])
                problem = ""
                if len(made) > 1:
                    problem = "records " + ", ".join(f"{r.name} {state_name(r.state)}" for r in made)
                elif c.code == "OK" and c.state not in HOLDING:
                    problem = f"answered OK with {c.name} {state_name(c.state)}"
                elif c.code == "OK" and c.name in broken:
                    problem = f"answered OK with {c.name}, which does not work"
                elif c.code in {s.name for s in RETRYABLE}:
                    problem = f"still answered {c.code} after {self.converge_bound:.0f}s ({c.message[:120]})"
                elif c.code != "OK" and any(r.state in HOLDING for r in made):
                    problem = f"answered {c.code} ({c.message[:120]}) but made {made[0].name}, {state_name(made[0].state)}"
                if problem:
                    self.find(number, "not converged", f"create {c.request_id} ({c.attempts} attempts): {problem}")
                if c.retried:
                    self.retried += 1
                    self.retried_converged += not problem
        self.clean(number, records, workers, broken)

    def clean(self, number: int, records: list[W], workers: list[Client], broken: set[str]) -> None:
        """Destroys what no client holds any more (FAILED records, workspaces a create answered
        with an error, those found broken), so that one finding does not breed others."""
        for w in workers:
            w.owned[:] = [t for t in w.owned if t.name not in broken]
        held = {t.name for w in workers for t in w.owned}
        doomed = [r.name for r in records if r.state not in (W.STATE_TERMINATED,) and r.name not in held]
        repository = clients.repository(self.stack.repository.address)
        for name in doomed:
            try:
                repository.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=name), timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                self.find(number, "stuck", f"{name} could not be destroyed: {exc.code().name} {exc.details()[:120]}")
        deadline = time.monotonic() + self.settle_bound
        while doomed and time.monotonic() < deadline:
            states = {w.name: w.state for w in self.records()}
            doomed = [n for n in doomed if states.get(n) != W.STATE_TERMINATED]
            time.sleep(0.3)
        for name in doomed:
            self.find(number, "stuck", f"{name} not TERMINATED {self.settle_bound:.0f}s after its destroy")

    # ------------------------------------------------------------------ the end
    def destroy_everything(self) -> list[str]:
        """Destroys every workspace; returns what is left on the host afterwards (a pool account's
        filesystem stays with it, by design: what names no workspace is not counted)."""
        for w in self.owned:
            w.clear()
        self.clean(self.rounds, self.records(), [], set())
        deadline = time.monotonic() + self.settle_bound
        while True:
            left = [str(t) for t in host.everything(self.stack) if t.workspace]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def summary(self) -> str:
        ops = collections.defaultdict(list)
        for (operation, code), n in sorted(self.figures.operations.items()):
            ops[operation].append(f"{code} {n}")
        lines = [f"chaos: seed {self.seed} (replay: VWS_CHAOS_SEED={self.seed}), {self.rounds} rounds",
                 "chaos: kills: " + (", ".join(f"{k} {n}" for k, n in sorted(self.kills.items())) or "none")
                 + f" ({sum(self.kills.values())} in all)",
                 "chaos: operations: " + "; ".join(f"{op}: {', '.join(v)}" for op, v in ops.items()),
                 *(f"  {op} {code}: e.g. {text}" for (op, code), text in sorted(self.figures.examples.items())),
                 f"chaos: retried creates converged {self.retried_converged}/{self.retried} "
                 f"(creates {self.creates})",
                 "chaos: " + ", ".join(f"{k} {len(v)}" for k, v in self.findings.items())]
        for kind in KINDS:
            lines += [f"  {kind}: {f}" for f in self.findings[kind]]
        return "\n".join(lines)

    def close(self) -> None:
        self.stack.close()


def pin(p: Process) -> None:
    """The process starts again on the address it has now (its clients keep it)."""
    p.flags = [p.address if f.endswith(":0") and f.startswith("127.0.0.1") else f for f in p.flags]
