"""One fuzz run against a real stack: where each service answers, the live workspace requests aim
at (kept running between examples, made again when a request destroyed it), what each request
left behind undone (a workspace it created, an image it added), a new failure narrowed to the
fields that cause it, and after the run the strays: accounts, records, mounts and files nobody
meant to leave."""
from __future__ import annotations

import base64
import json
import os
import pathlib
import pwd
import re
import subprocess
import time
import uuid

import grpc
from google.protobuf import descriptor, message_factory
from hypothesis import strategies as st
from vws.common import clients, tls
from vws.common.auth import pki as local_pki
from vws.manager.backends.host import disk
from vws.v1 import (
    access_pb2,
    auth_pb2,
    factory_pb2,
    manager_pb2,
    record_pb2,
    repository_pb2,
    transfer_pb2,
    workspace_pb2,
)

from tests.fuzz import harness, values
from tests.integration.stack import Stack, wait_until

W = workspace_pb2.Workspace
PUBLIC = [factory_pb2, repository_pb2, manager_pb2, access_pb2, auth_pb2]
SERVICE_ONLY = [record_pb2, transfer_pb2]
# Where each service answers: the repository also serves AccessService, AuthService, RecordService.
HOME = {"FactoryService": "factory", "RepositoryService": "repository", "AccessService": "repository",
        "AuthService": "repository", "RecordService": "repository", "ManagerService": "manager",
        "TransferService": "manager"}
# RPCs whose request may change or end the live workspace: it is put back after each.
CHANGING = {"UpdateTerminationTime", "DeleteWorkspace", "StartWorkspace", "StopWorkspace", "PauseWorkspace",
            "ResumeWorkspace", "SuspendWorkspace", "RebootWorkspace", "DestroyWorkspace", "MigrateWorkspace",
            "FinishMigration", "AbortMigration", "AcceptMigration", "DeployWorkspace"}
TIMEOUTS = {"CreateWorkspace": 120.0, "MigrateWorkspace": 60.0, "DeleteWorkspace": 60.0, "DestroyWorkspace": 60.0,
            "Exec": 30.0, "StopWorkspace": 60.0, "CreateImage": 30.0}
TERMINAL = (W.STATE_TERMINATED, W.STATE_FAILED)
MAX_PROBES = 24


def methods(modules) -> list[descriptor.MethodDescriptor]:
    return [m for mod in modules for s in mod.DESCRIPTOR.services_by_name.values() for m in s.methods]


class Run:
    def __init__(self, root: pathlib.Path):
        self.stack = Stack(root).start(1)  # it also makes this process call as the administrator
        self.ledger = harness.Ledger()
        self.channels: dict[tuple[str, str], grpc.Channel] = {}
        self.live: W | None = None
        self.tokens: dict[str, list[str]] = {}
        self.challenge = ""
        self.hints = values.Hints(self._hint_table())
        # A create with only what the factory reads (spec and labels) set, half the time: random
        # output-only fields would stop most creates before the checks worth reaching.
        self.hints.table["CreateWorkspaceRequest.workspace"] = st.builds(
            lambda spec, labels: W(spec=spec, labels=labels),
            values.message(workspace_pb2.WorkspaceSpec.DESCRIPTOR, self.hints),
            values.field_value(W.DESCRIPTOR, W.DESCRIPTOR.fields_by_name["labels"], self.hints, 1))
        # Listings with nothing set but a real or forged page token, so that its fingerprint
        # matches and what the token holds is what the listing reads.
        tokens = lambda name: lambda: self.tokens.get(name, [])
        self.hints.table["ListAuditEntriesRequest"] = values.pick(
            lambda: [access_pb2.ListAuditEntriesRequest(page_token=t) for t in tokens("ListAuditEntries")()],
            st.just(access_pb2.ListAuditEntriesRequest()))
        self.hints.table["ListWorkspaceEventsRequest"] = values.pick(
            lambda: [repository_pb2.ListWorkspaceEventsRequest(parent=self.live.name, page_token=t)
                     for t in tokens("ListWorkspaceEvents")()], st.just(repository_pb2.ListWorkspaceEventsRequest()))
        # Execs that reach the kernel: a real program in the live workspace, random arguments,
        # environment and directory.
        ex = manager_pb2.ExecRequest.DESCRIPTOR
        argument = values.single(ex, ex.fields_by_name["argv"], self.hints, 1)
        self.hints.table["ExecRequest"] = st.builds(
            lambda program, args, env, cwd, large: manager_pb2.ExecRequest(
                name=self.live.name, argv=[program, *args, *(["x" * 200] * 1000 if large else [])],
                environment=env, working_directory=cwd, close_stdin=True),
            st.sampled_from(["true", "echo", "env", "sh", "/bin/true"]), st.lists(argument, max_size=3),
            values.field_value(ex, ex.fields_by_name["environment"], self.hints, 1),
            values.single(ex, ex.fields_by_name["working_directory"], self.hints, 1), st.booleans())
        self._refresh_live()
        self._collect_tokens()

    # -- where requests go -------------------------------------------------------------------

    def address(self, service: str) -> str:
        where = HOME[service]
        return self.stack.managers["m0"].address if where == "manager" else getattr(self.stack, where).address

    def channel(self, service: str, who: str = "admin") -> grpc.Channel:
        key = (self.address(service), who)
        if key not in self.channels:
            if who == "admin":
                self.channels[key] = clients.new_channel(key[0])
            else:  # a plain user of the site: a certificate of the site's CA naming no administrator
                cert, private = self.stack.pki.issue_user(f"fuzz-{who}")
                creds = tls.channel_credentials(tls.Identity(self.stack.pki.ca_pem(), cert, private))
                self.channels[key] = grpc.secure_channel(key[0], creds, options=clients.OPTIONS)
        return self.channels[key]

    # -- what fields may name ----------------------------------------------------------------

    def _hint_table(self) -> dict:
        live = lambda: [self.live.name] if self.live else []
        manager = lambda: [self.stack.manager_name("m0"), "managers/nope", "managers/", "managers/../../x"]
        workspaces = lambda: [*live() * 4, f"workspaces/{uuid.uuid4()}", "workspaces/", "workspaces/..",
                              *(f"{n}/x" for n in live())]
        MiB = 1024 * 1024
        admin = lambda: [local_pki.admin_identity(), "alice"]
        return {
            "name": workspaces, "parent": workspaces, "target": workspaces,
            "GetImageRequest.name": lambda: ["images/busybox", "images/", f"images/{values.MARK}", "busybox"],
            "DeleteImageRequest.name": lambda: [f"images/{values.MARK}", "images/", "images/.."],
            "HeartbeatManagerRequest.name": manager, "Manager.name": manager,
            "destination": manager, "manager": manager, "source": manager,
            "owner": admin, "identity": admin,
            "member": lambda: ["identity:/O=vws/OU=users/CN=fuzz", "group:/atlas", "identity:", "group:",
                               f"identity:{local_pki.admin_identity()}"],
            "request_id": lambda: [str(uuid.uuid4()), str(uuid.uuid4())],
            "image": lambda: ["images/busybox", "busybox", "images/"],
            "image_id": lambda: [values.MARK, f"{values.MARK}-2", "a" * 64],
            "argv": lambda: ["true", "echo", "env", "pwd", "id", "sh", "-c", "exit 3", "ls", "/", "a\x00b",
                             "x" * 140_000],
            "working_directory": lambda: ["", ".", "/", "../../root", "/root", "/tmp", "sub/dir", "../.."],
            "page_token": lambda: self.tokens.get("any", []),
            "ListWorkspacesRequest.page_token": lambda: self.tokens.get("ListWorkspaces", []),
            "ListWorkspaceEventsRequest.page_token": lambda: self.tokens.get("ListWorkspaceEvents", []),
            "ListAuditEntriesRequest.page_token": lambda: self.tokens.get("ListAuditEntries", []),
            "path": lambda: ["a", "a/b", "x" * 300, f"../../{values.MARK}", ".bashrc", "a/./b", f"/tmp/{values.MARK}"],
            "setup_script": lambda: ["true", "echo hi > f", "exit 1", "env"],
            "location": lambda: ["/etc/hostname", "/etc", f"/nonexistent/{values.MARK}", f"../../{values.MARK}"],
            "outcome": lambda: ["OK", "PERMISSION_DENIED"],
            "challenge": lambda: [self.challenge] if self.challenge else [],
            "digest": lambda: ["blake3-4m:" + "0" * 64, "blake3-4m:", "sha256:00"],
            "package": lambda: ["{}", "[]", '{"files": 1}', "null"],
            "address": lambda: ["127.0.0.1:1", "localhost:0"],
            "key": lambda: ["PATH", "HOME", "VWSENV_0", "LD_PRELOAD", "env", "a" * 64, "a" * 63, "A=B", "a\x00"],
            "value": lambda: ["1", "prod", "/bin", "x" * 140_000, "a\x00b"],
            # A create that passes the first checks, so that the later ones are reached.
            "WorkspaceSpec.kind": lambda: [workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT],
            "unix_group": lambda: [""],
            "memory_bytes": lambda: [0, 9, 65536, 64 * MiB, 256 * MiB],
            "disk_bytes": lambda: [0, 1, 4096, 16 * MiB, 64 * MiB],
            "cpu_millis": lambda: [0, 1, 100, 500],
            "max_processes": lambda: [0, 1, 2, 64],
            "network_bits_per_second": lambda: [0, 1, 8000],
            "lifetime": lambda: [duration(3600), duration(60), duration(1)],
            "content": lambda: [b"", b"hello\n", b"x" * 200_000],
            "mode": lambda: [0, 0o644, 0o755, 0o4755, 0o7777, 0o1000000],
        }

    def _collect_tokens(self) -> None:
        """Real page tokens of the listings (a page of one), and forgeries of them: each value
        of a token that decodes as JSON replaced by a huge int, a bool, a list, a huge string."""
        ch = self.channel("RepositoryService")
        calls = {
            "ListWorkspaces": (repository_pb2.ListWorkspacesRequest(page_size=1), self._unary(ch, "RepositoryService", "ListWorkspaces")),
            "ListWorkspaceEvents": (repository_pb2.ListWorkspaceEventsRequest(parent=self.live.name, page_size=1),
                                    self._unary(ch, "RepositoryService", "ListWorkspaceEvents")),
            "ListAuditEntries": (access_pb2.ListAuditEntriesRequest(page_size=1),
                                 self._unary(self.channel("AccessService"), "AccessService", "ListAuditEntries")),
        }
        for name, (request, rpc) in calls.items():
            try:
                token = rpc(request).next_page_token
            except grpc.RpcError:
                token = ""
            self.tokens[name] = [t for t in [token, *forgeries(token)] if t]
            self.tokens.setdefault("any", []).extend(self.tokens[name][:3])
        try:
            self.challenge = self._unary(self.channel("AuthService"), "AuthService", "CreateChallenge")(
                auth_pb2.CreateChallengeRequest()).challenge
        except grpc.RpcError:
            self.challenge = ""

    def _unary(self, ch, service: str, method: str):
        m = next(x for x in methods(PUBLIC) if x.containing_service.name == service and x.name == method)
        return ch.unary_unary(harness.method_path(m), request_serializer=lambda r: r.SerializeToString(),
                              response_deserializer=message_factory.GetMessageClass(m.output_type).FromString)

    # -- the live workspace ------------------------------------------------------------------

    def _create(self) -> W:
        spec = workspace_pb2.WorkspaceSpec(kind=workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT)
        r = clients.factory(self.stack.factory.address).CreateWorkspace(factory_pb2.CreateWorkspaceRequest(
            request_id=str(uuid.uuid4()), workspace=W(spec=spec, labels={"fuzz": "live"})), timeout=120)
        return r.workspace

    def _get(self, name: str) -> W | None:
        try:
            return clients.repository(self.stack.repository.address).GetWorkspace(
                repository_pb2.GetWorkspaceRequest(name=name), timeout=10).workspace
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def _refresh_live(self) -> None:
        """The live workspace RUNNING again, with an hour to live; made anew when it ended."""
        ws = self._get(self.live.name) if self.live else None
        deadline = time.monotonic() + 60
        while ws is not None and ws.state not in (*TERMINAL, W.STATE_RUNNING, W.STATE_READY, W.STATE_PAUSED,
                                                  W.STATE_SUSPENDED) and time.monotonic() < deadline:
            time.sleep(0.2)
            ws = self._get(ws.name)
        mgr = clients.manager(self.stack.managers["m0"].address)
        if ws is None or ws.state in TERMINAL or ws.state == W.STATE_TERMINATING:
            if ws is not None and ws.state != W.STATE_TERMINATED:
                self._delete(ws.name)
            self.live = self._create()
            return
        if ws.state == W.STATE_READY:
            mgr.StartWorkspace(manager_pb2.StartWorkspaceRequest(name=ws.name), timeout=60)
        elif ws.state in (W.STATE_PAUSED, W.STATE_SUSPENDED):
            mgr.ResumeWorkspace(manager_pb2.ResumeWorkspaceRequest(name=ws.name), timeout=60)
        if ws.termination_time.seconds < time.time() + 1800:
            req = repository_pb2.UpdateTerminationTimeRequest(name=ws.name)
            req.termination_time.FromSeconds(int(time.time()) + 7200)
            clients.repository(self.stack.repository.address).UpdateTerminationTime(req, timeout=10)
        self.live = self._get(ws.name)

    def _delete(self, name: str) -> None:
        """A workspace the run made on purpose, destroyed and waited for."""
        try:
            clients.repository(self.stack.repository.address).DeleteWorkspace(
                repository_pb2.DeleteWorkspaceRequest(name=name), timeout=60)
        except grpc.RpcError:
            pass
        try:
            wait_until(lambda: (w := self._get(name)) is None or w.state in TERMINAL, 60, 0.2, f"{name} to end")
        except AssertionError:
            self.ledger.notes[f"{name} did not end within 60 s of its deletion"] += 1

    # -- one request -------------------------------------------------------------------------

    def send(self, method: descriptor.MethodDescriptor, requests: list, who: str = "admin",
             raw: bool = False) -> harness.Outcome:
        """Sends, records, and undoes what it did (a workspace or image it made, the live
        workspace it changed)."""
        service = method.containing_service.name
        outcome = harness.invoke(self.channel(service, who), method, requests,
                                 TIMEOUTS.get(method.name, 20.0), raw=raw)
        self.ledger.record(label(method, who, raw), outcome)
        outcome.after = self._usable(method, outcome) + self._contained(method, requests, outcome, raw)
        self._undo(method, outcome)
        return outcome

    def _undo(self, method, outcome: harness.Outcome) -> None:
        if outcome.code == "OK" and method.name == "CreateWorkspace" and outcome.response.workspace.name:
            self._delete(outcome.response.workspace.name)
        if outcome.code == "OK" and method.name == "CreateImage" and outcome.response.image.name:
            try:
                clients.repository(self.stack.repository.address).DeleteImage(
                    repository_pb2.DeleteImageRequest(name=outcome.response.image.name), timeout=30)
            except grpc.RpcError as exc:
                self.ledger.notes[f"an image made could not be deleted: {exc.code().name}"] += 1
        if method.name in CHANGING:
            self._refresh_live()
        if outcome.code == "UNAVAILABLE":
            for p in [self.stack.repository, self.stack.factory, *self.stack.managers.values()]:
                if p.proc.poll() is not None:
                    raise AssertionError(f"{p.service} died (exit {p.proc.returncode}):\n{p.log()[-3000:]}")

    def judge(self, method, requests: list, outcome: harness.Outcome, who: str = "admin",
              expect_refusal: bool = False, raw: bool = False) -> list[str]:
        """Records every problem of `outcome` as a failure; a new failure is narrowed to the
        fields that cause it. Returns the problems."""
        sent = [s for r in requests for s in (values.strings_in(r) if not raw else [r.decode(errors="replace")])]
        found = harness.problems(outcome, sent, [str(self.stack.root)])
        if expect_refusal and outcome.code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            found.append(f"not refused ({who})")
        found += outcome.after
        cause = self.cause(outcome) if found else ""
        if cause and method.name == "CreateWorkspace":
            self.ledger.notes["creates answered INTERNAL"] += 1
        for check in found:
            failure, new = self.ledger.failure(label(method, who, raw), check, outcome,
                                               repr(requests[0][:80]) if raw else harness.short(requests[0]), cause)
            if new:
                failure.fields = ",".join(outcome.fields) or (
                    "" if raw else self.narrow(method, requests, outcome, who, cause))
        return found

    def cause(self, outcome: harness.Outcome) -> str:
        """For an INTERNAL our servers answered: the exception behind it, from their logs."""
        ref = re.search(r"\(ref ([0-9a-f]+)\)", outcome.details)
        if not ref:
            return ""
        for p in [self.stack.repository, self.stack.factory, *self.stack.managers.values()]:
            try:
                text = p.log_path.read_text(errors="replace")
            except OSError:
                continue
            found = harness.cause_in_log(text, ref.group(1))
            if found:
                return found
        return ""

    def _contained(self, method, requests: list, outcome: harness.Outcome, raw: bool) -> list[str]:
        """An Exec accepted with a relative working_directory must have run inside the
        workspace's home (issue 17, class 10): `pwd` run there again says where."""
        relative = requests[0].working_directory if not raw and method.name == "Exec" else "/"
        if outcome.code != "OK" or not relative or relative.startswith("/"):  # the contract allows absolute ones
            return []
        home = pwd_home(self.live.endpoint.host_identity) if self.live else ""
        if not home or requests[0].name != self.live.name:
            return []
        where = self.exec_output(self.live.name, ["pwd"], requests[0].working_directory).strip()
        inside = where == home or where.startswith(home + "/")
        return [] if inside or not where else [f"ran outside the home ({where[:40]})"]

    def _usable(self, method, outcome: harness.Outcome) -> list[str]:
        """An accepted create must be usable (issue 17, classes 5 and 8): not FAILED, and
        `true` runs in it once it is RUNNING."""
        if method.name != "CreateWorkspace" or outcome.code != "OK":
            return []
        ws = outcome.response.workspace
        if ws.state == W.STATE_FAILED:
            return ["OK with a FAILED workspace"]
        if ws.state == W.STATE_RUNNING:
            why = self.exec_true(ws.name)
            return [f"accepted but unusable: {why[:40]}"] if why else []
        return []

    def narrow(self, method, requests: list, outcome: harness.Outcome, who: str, cause: str) -> str:
        """The fields of the first request that still bring the same answer (status, message,
        cause) when the others are cleared (at most MAX_PROBES more requests)."""
        request, rest = requests[0], requests[1:]
        current, probes = request, 0
        for path in values.set_paths(request):
            if probes >= MAX_PROBES:
                break
            if path not in values.set_paths(current):
                continue
            candidate = values.cleared(current, path)
            probes += 1
            again = self.send(method, [candidate, *rest], who)
            same = again.code == outcome.code and harness.prefix(again.details) == harness.prefix(outcome.details)
            if same and (not cause or harness.prefix(self.cause(again), 120) == harness.prefix(cause, 120)):
                current = candidate
        leaves = [p for p in values.set_paths(current)
                  if not any(q.startswith(p + ".") for q in values.set_paths(current))]
        return ",".join(leaves) or "(empty request)"

    # -- exec in a workspace created by the fuzzer -------------------------------------------

    def exec_true(self, name: str) -> str:
        """'' when `true` runs in the workspace, else why not. By its whole path: a PATH the
        request set is the owner's choice (PATH=1 finds nothing, as in any shell)."""
        def requests():
            yield manager_pb2.ExecRequest(name=name, argv=["/bin/true"], close_stdin=True)
        try:
            for msg in clients.manager(self.stack.managers["m0"].address).Exec(requests(), timeout=30):
                if msg.WhichOneof("output") == "exit_status":
                    return "" if msg.exit_status.code == 0 else f"true exited {msg.exit_status.code}"
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()[:80]}"
        return "no exit status"

    def exec_output(self, name: str, argv: list[str], cwd: str = "") -> str:
        """What `argv` writes to stdout in the workspace; '' when it cannot run."""
        def requests():
            yield manager_pb2.ExecRequest(name=name, argv=argv, working_directory=cwd, close_stdin=True)
        out = b""
        try:
            for msg in clients.manager(self.stack.managers["m0"].address).Exec(requests(), timeout=30):
                out += msg.stdout
        except grpc.RpcError:
            return ""
        return out.decode(errors="replace")

    # -- after the run -----------------------------------------------------------------------

    def strays(self) -> list[str]:
        """What the run left that it did not mean to: accounts, records, mounts, files."""
        self._refresh_live()
        found = []
        live_account = self.live.endpoint.host_identity
        accounts = [a for a in self.stack.accounts() if a != live_account]
        found += [f"account {a}" for a in accounts]
        listed = clients.listed(clients.repository(self.stack.repository.address).ListWorkspaces,
                                repository_pb2.ListWorkspacesRequest(), "workspaces")
        found += [f"record {w.name} ({W.State.Name(w.state)}, owner {w.owner}, request_id {w.request_id!r})"
                  for w in listed if w.name != self.live.name]
        root = str(self.stack.root)
        live_home = self.live.enforcement.disk_mount
        for point, source, _ in disk.mounts():
            ours = point.startswith(root) or source.startswith(root) or self.stack.prefix in point
            stock = "/ready/ready-" in point  # the manager's formatted disks waiting for workspaces
            if ours and not stock and point != live_home and point != root:
                found.append(f"mount {point} ({source})")
        for top in ("/tmp", "/root", "/home", "/var/lib/vws", "/run/vws", "/", root):
            if os.path.isdir(top):
                r = subprocess.run(["find", top, "-xdev", "-maxdepth", "6", "-name", f"*{values.MARK}*"],
                                   check=False, capture_output=True, text=True, timeout=120)
                found += [f"file {p}" for p in r.stdout.split()]
        homes = [p for p in pathlib.Path("/home").glob(f"{self.stack.prefix}*") if p.name != live_account]
        found += [f"home {p}" for p in homes]
        return sorted(set(found))

    def close(self) -> None:
        try:
            if self.live:
                self._delete(self.live.name)
        finally:
            for ch in self.channels.values():
                ch.close()
            self.stack.close()


def pwd_home(account: str) -> str:
    try:
        return pwd.getpwnam(account).pw_dir
    except KeyError:
        return ""


def duration(seconds: int):
    from google.protobuf import duration_pb2
    return duration_pb2.Duration(seconds=seconds)


def label(method, who: str = "admin", raw: bool = False) -> str:
    """How a run's failures name the RPC: with the caller when not the administrator, and
    `(bytes)` for undecodable requests."""
    return harness.rpc_name(method) + ("" if who == "admin" else f" as {who}") + (" (bytes)" if raw else "")


def forgeries(token: str) -> list[str]:
    """A page token's look-alikes: each JSON value in it replaced by values its listing never
    writes. Opaque tokens (not base64 JSON) are only cut and padded."""
    if not token:
        return []
    out = [token[:-1], token + "A", token[::-1]]
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        return out
    if not isinstance(doc, dict):
        return out
    for key in doc:
        for bad in (2 ** 70, -2 ** 70, True, [1, 2], None, {"a": 1}, "x" * 2000, 1.5, -1):
            forged = {**doc, key: bad}
            out.append(base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("="))
    return out
