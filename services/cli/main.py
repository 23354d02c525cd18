"""`vws`: the command line for Virtual Workspaces.

Every failure ends as one line on stderr and a non-zero exit; a traceback never reaches the
user (VWS_DEBUG=1 shows it, for us)."""
from __future__ import annotations

import argparse
import getpass
import logging
import os
import pathlib
import sys
import threading
import tomllib
import uuid

import grpc

from . import access, credentials
from . import output as out
from ..common import clients, config, errors, names, units
from ..v1 import (access_pb2, factory_pb2, image_pb2, manager_pb2, repository_pb2, workspace_pb2)

W = workspace_pb2.Workspace
IMG = image_pb2.Image
IMG_FILE = image_pb2.ImageFile
KINDS = {"account": workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT,
         "sandbox": workspace_pb2.WorkspaceSpec.KIND_SANDBOX,
         "vm": workspace_pb2.WorkspaceSpec.KIND_VIRTUAL_MACHINE}
TIMEOUT = 30.0
# Calls that may wait on a guest (shut down, save or restore its memory) or copy an image.
LONG_TIMEOUT = 300.0
DEFAULT_FACTORY = "127.0.0.1:7702"


class CliError(Exception):
    """A failure to print as one line; exit code attached."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- where to connect
def data_dir(args) -> pathlib.Path:
    chosen = getattr(args, "data_dir", None) or getattr(args, "global_data_dir", None)
    return pathlib.Path(chosen).expanduser() if chosen else config.default_data_dir()


def _config_endpoint(args) -> str:
    path = os.environ.get("VWS_CONFIG") or str(data_dir(args) / "vws.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return ""
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path} is not valid TOML: {exc}")
    return str(doc.get("cli", {}).get("endpoint", "") or doc.get("endpoint", ""))


def factory_address(args) -> tuple[str, str]:
    """(address, where it came from): --endpoint, VWS_ENDPOINT, the config file, then the
    stack that `vws up` started (its run file), then the default port."""
    if getattr(args, "endpoint", None):
        return args.endpoint, "--endpoint"
    if os.environ.get("VWS_ENDPOINT"):
        return os.environ["VWS_ENDPOINT"], "VWS_ENDPOINT"
    configured = _config_endpoint(args)
    if configured:
        return configured, "the config file"
    run = config.read_run_file(data_dir(args), "factory")
    if run and run.get("address"):
        return run["address"], f"the stack in {data_dir(args)}"
    return DEFAULT_FACTORY, "the default"


class Connection:
    def __init__(self, args):
        self.args = args
        self.factory_address, self.source = factory_address(args)
        self._repository_address = ""

    def ready(self) -> None:
        """Before the first call: the user's credential found and the process's calls set up."""
        use_credentials(self.args)

    def unreachable(self, what: str, address: str) -> CliError:
        return CliError(f"cannot reach the {what} at {address} (from {self.source}); is the stack running? "
                        "Start it with `vws up`, or point at it with --endpoint or VWS_ENDPOINT", 3)

    def factory(self):
        self.ready()
        return clients.factory(self.factory_address)

    def site(self) -> factory_pb2.GetSiteInfoResponse:
        self.ready()
        try:
            return clients.factory(self.factory_address).GetSiteInfo(factory_pb2.GetSiteInfoRequest(), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise self.unreachable("factory", self.factory_address) from None
            raise

    def repository_address(self) -> str:
        self.ready()
        if not self._repository_address:
            run = config.read_run_file(data_dir(self.args), "repository")
            if self.source.startswith("the stack") and run and run.get("address"):
                self._repository_address = run["address"]
            else:
                self._repository_address = self.site().repository_address
        return self._repository_address

    def repository(self):
        return clients.repository(self.repository_address())

    def identity(self) -> str:
        """Who the site takes this user for (the local user name on a plain-text stack)."""
        try:
            caller = self.access().GetCaller(access_pb2.GetCallerRequest(), timeout=TIMEOUT).caller
        except grpc.RpcError:
            return getpass.getuser()
        return caller.identity if caller.credential_kind else getpass.getuser()

    def access(self):
        return clients.access(self.repository_address())

    def get(self, name: str) -> W:
        return self.repository().GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name), timeout=TIMEOUT).workspace

    def manager_of(self, ws: W):
        """The manager holding the workspace, at the address it last registered."""
        if not ws.endpoint.manager:
            raise CliError(f"{ws.name} is not on any manager yet (it is {state_name(ws.state)})")
        address = ws.endpoint.manager_address
        try:
            r = self.repository().ListManagers(repository_pb2.ListManagersRequest(page_size=1000), timeout=TIMEOUT)
            address = next((m.address for m in r.managers if m.name == ws.endpoint.manager), address)
        except grpc.RpcError:
            pass
        return clients.manager(address), address


def pairs(items: list[str], flag: str, form: str = "NAME=VALUE") -> dict[str, str]:
    """Repeated `--flag KEY=VALUE` options as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"{flag} {item!r}: write it as {form}", 2)
        out[key] = value
    return out


def state_name(value: int) -> str:
    return out.enum_name(W.State, value, "STATE_")


def host_noun(kind: int) -> str:
    """What realises a workspace of this kind on its host, as the CLI names it."""
    return "domain" if kind == KINDS["vm"] else "account"


def kind_name(value: int) -> str:
    return {v: k for k, v in KINDS.items()}.get(value, "?")


def workspace_name(text: str) -> str:
    name = names.normalise_workspace_name(text)
    names.parse_workspace_name(name, "NAME")
    return name


def image_name(text: str) -> str:
    """`busybox` or `images/busybox` -> `images/busybox`."""
    return names.image_name(names.parse_image_name(text, "NAME"))


# --------------------------------------------------------------------------- printing
def show_workspace(ws: W) -> None:
    spec, r = ws.spec, ws.spec.resources
    rows = [
        ("name", ws.name), ("state", state_name(ws.state)), ("message", ws.state_message or "-"),
        ("kind", kind_name(spec.kind)), ("manager", ws.endpoint.manager or "-"),
        ("manager address", ws.endpoint.manager_address or "-"), (host_noun(spec.kind), ws.endpoint.host_identity or "-"),
        ("owner", ws.owner or "-"), ("memory", out.size(r.memory_bytes)), ("disk", out.size(r.disk_bytes)),
        ("cpu", out.cpu(r.cpu_millis)), ("bandwidth", out.bandwidth(r.network_bits_per_second)),
        ("processes", str(r.max_processes) if r.max_processes else "-"),
        ("created", out.when(ws.create_time)), ("updated", out.when(ws.update_time)),
        ("terminates", f"{out.when(ws.termination_time)} (in {out.remaining(ws.termination_time)})"
         if ws.termination_time.seconds else "-"),
        ("labels", ", ".join(f"{k}={v}" for k, v in sorted(ws.labels.items())) or "-"),
        ("environment", ", ".join(sorted(spec.software.environment)) or "-"),
        ("staged files", ", ".join(f.path for f in spec.software.files) or "-"),
    ]
    if spec.software.image:
        rows.insert(4, ("image", spec.software.image))
    if ws.HasField("progress"):
        rows.insert(3, ("progress", out.progress_line(ws.progress)))
    if ws.HasField("enforcement"):
        e = ws.enforcement
        rows.append(("enforced by", f"{e.mechanism or '-'}{' in ' + e.cgroup if e.cgroup else ''}"))
        rows += [(f"  {k}", v) for k, v in (
            ("memory limit", out.size(e.memory_limit_bytes)),
            ("cpu quota", f"{e.cpu_quota_micros}us per {e.cpu_period_micros}us" if e.cpu_period_micros else "-"),
            ("disk", f"{out.size(e.disk_bytes)} at {e.disk_mount}" if e.disk_bytes else "-"),
            ("bandwidth", out.bandwidth(e.network_bits_per_second)),
            ("processes", str(e.max_processes) if e.max_processes else "-"))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")


def emit(args, message, human) -> None:
    if getattr(args, "output", "table") == "json":
        out.print_json(out.to_dict(message))
    else:
        human(message)


# --------------------------------------------------------------------------- commands
def cmd_create(args) -> int:
    conn = Connection(args)
    kind = args.kind or ("vm" if args.image else "account")
    spec = workspace_pb2.WorkspaceSpec(kind=KINDS[kind])
    res = spec.resources
    if args.memory is not None:
        res.memory_bytes = units.parse_size(args.memory, "--memory")
    if args.disk is not None:
        res.disk_bytes = units.parse_size(args.disk, "--disk")
    if args.cpu is not None:
        res.cpu_millis = units.parse_cpu(args.cpu, "--cpu")
    if args.bandwidth is not None:
        res.network_bits_per_second = units.parse_bandwidth(args.bandwidth, "--bandwidth")
    if args.processes is not None:
        res.max_processes = args.processes
    if args.lifetime is not None:
        spec.lifetime.FromTimedelta(units.parse_duration(args.lifetime, "--lifetime"))
    spec.software.environment.update(pairs(args.env, "--env"))
    if args.setup_script:
        path = pathlib.Path(args.setup_script)
        try:
            spec.software.setup_script = path.read_text() if path.exists() else args.setup_script
        except OSError as exc:
            raise CliError(f"--setup-script {args.setup_script}: {exc.strerror}")
    for dest, src in pairs(args.file, "--file", "PATH_IN_WORKSPACE=LOCAL_FILE").items():
        try:
            st = os.stat(src)
            content = pathlib.Path(src).read_bytes()
        except OSError as exc:
            raise CliError(f"--file {dest}={src}: {exc.strerror}")
        spec.software.files.add(path=dest, content=content, mode=st.st_mode & 0o777)
    if args.image:
        spec.software.image = args.image
    spec.start_on_create = not args.no_start
    labels = pairs(args.label, "--label", "KEY=VALUE")
    ws = W(spec=spec, labels=labels, owner=getpass.getuser())
    request_id = args.request_id or str(uuid.uuid4())
    try:
        r = conn.factory().CreateWorkspace(factory_pb2.CreateWorkspaceRequest(request_id=request_id, workspace=ws),
                                           timeout=args.timeout)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            raise conn.unreachable("factory", conn.factory_address) from None
        raise
    created = r.workspace
    if args.wait:
        created = wait_for(conn, created.name, {W.STATE_READY, W.STATE_RUNNING} if args.no_start else {W.STATE_RUNNING},
                           args.timeout, bar=out.ProgressBar(sys.stderr))
    if args.output == "json":
        out.print_json(out.to_dict(r if not args.wait else factory_pb2.CreateWorkspaceResponse(
            workspace=created, endpoint=created.endpoint)))
    else:
        print(f"{created.name}  {state_name(created.state)}  on {created.endpoint.manager} "
              f"({created.endpoint.manager_address}), {host_noun(created.spec.kind)} "
              f"{created.endpoint.host_identity or '-'}")
    return 0 if created.state != W.STATE_FAILED else 1


def wait_for(conn: Connection, name: str, targets: set[int], timeout: float, bar: "out.ProgressBar | None" = None
             ) -> W:
    """Follows the workspace's changes (WatchWorkspace) until it reaches a target state; with a
    bar, shows the progress of long work (an image copy while PROPAGATING) as it goes."""
    call = conn.repository().WatchWorkspace(repository_pb2.WatchWorkspaceRequest(name=name), timeout=timeout)
    last = None
    try:
        for msg in call:
            last = msg.workspace
            if bar is not None:
                bar.show(last.progress if last.state == W.STATE_PROPAGATING and last.HasField("progress") else None)
            if last.state in targets:
                return last
            if last.state in (W.STATE_FAILED, W.STATE_TERMINATED) and last.state not in targets:
                raise CliError(f"{name} is {state_name(last.state)}: {last.state_message}")
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CliError(f"gave up waiting for {name} after {timeout:g}s; it is "
                           f"{state_name(last.state) if last else 'unknown'}", 4) from None
        raise
    finally:
        if bar is not None:
            bar.show(None)
    if last is None:
        raise CliError(f"the repository ended the watch of {name} without an answer")
    return last


def cmd_list(args) -> int:
    conn = Connection(args)
    states = []
    for s in args.state:
        key = "STATE_" + s.upper()
        if key not in W.State.keys():
            raise CliError(f"--state {s}: not a state; use one of "
                           + ", ".join(k[6:].lower() for k in W.State.keys()[1:]))
        states.append(W.State.Value(key))
    if args.all:
        states = [v for v in W.State.values() if v]
    labels = pairs(args.label, "--label", "KEY=VALUE")
    req = repository_pb2.ListWorkspacesRequest(page_size=args.limit if args.limit < 1000 else 1000,
                                               states=states, owner=args.owner or "", labels=labels,
                                               manager=(names.manager_name(args.manager) if args.manager and not
                                                        args.manager.startswith("managers/") else args.manager or ""),
                                               page_token=args.page_token or "")
    found, token = [], ""
    while True:
        r = conn.repository().ListWorkspaces(req, timeout=TIMEOUT)
        found.extend(r.workspaces)
        token = r.next_page_token
        if not token or len(found) >= args.limit or args.page_token:
            break
        req.page_token = token
    found = found[:args.limit]
    if args.output == "json":
        out.print_json({"workspaces": [out.to_dict(w) for w in found], "next_page_token": token})
        return 0
    rows = [[w.name.split("/", 1)[1], state_name(w.state), kind_name(w.spec.kind),
             w.endpoint.manager.split("/", 1)[-1] if w.endpoint.manager else "-",
             w.endpoint.host_identity or "-", out.size(w.spec.resources.memory_bytes),
             out.cpu(w.spec.resources.cpu_millis), out.remaining(w.termination_time), w.owner or "-"]
            for w in found]
    print(out.table(rows, ["NAME", "STATE", "KIND", "MANAGER", "HOST IDENTITY", "MEMORY", "CPU", "EXPIRES IN", "OWNER"]))
    if token:
        print(f"(more: --limit {args.limit * 2} or --page-token {token})", file=sys.stderr)
    return 0


def cmd_show(args) -> int:
    conn = Connection(args)
    emit(args, conn.get(workspace_name(args.name)), show_workspace)
    return 0


def cmd_events(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    events, token = [], ""
    while True:
        r = conn.repository().ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(
            parent=name, page_size=1000, page_token=token), timeout=TIMEOUT)
        events.extend(r.events)
        token = r.next_page_token
        if not token:
            break
    if args.output == "json":
        out.print_json({"events": [out.to_dict(e) for e in events]})
        return 0
    rows = [[out.when(e.time), out.enum_name(workspace_pb2.WorkspaceEvent.Type, e.type, "TYPE_"),
             f"{state_name(e.previous_state)} -> {state_name(e.state)}", e.source or "-", e.message]
            for e in events]
    print(out.table(rows, ["TIME", "EVENT", "STATE", "SOURCE", "MESSAGE"]))
    return 0


def _manager_call(args, method: str, request_type, timeout: float = TIMEOUT, **fields):
    conn = Connection(args)
    name = workspace_name(args.name)
    ws = conn.get(name)
    stub, address = conn.manager_of(ws)
    try:
        r = getattr(stub, method)(request_type(name=name, **fields), timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            raise CliError(f"cannot reach {ws.endpoint.manager} at {address}, which holds {name}", 3) from None
        raise
    emit(args, r.workspace, lambda w: print(f"{w.name}  {state_name(w.state)}  {w.state_message}"))
    return 0


def cmd_start(args):
    return _manager_call(args, "StartWorkspace", manager_pb2.StartWorkspaceRequest)


def cmd_stop(args):
    # A virtual machine is given time to shut down (ACPI) before it is forced off.
    return _manager_call(args, "StopWorkspace", manager_pb2.StopWorkspaceRequest, timeout=LONG_TIMEOUT,
                         force=args.force)


def cmd_pause(args):
    return _manager_call(args, "PauseWorkspace", manager_pb2.PauseWorkspaceRequest)


def cmd_resume(args):
    return _manager_call(args, "ResumeWorkspace", manager_pb2.ResumeWorkspaceRequest, timeout=LONG_TIMEOUT)


def cmd_suspend(args):
    return _manager_call(args, "SuspendWorkspace", manager_pb2.SuspendWorkspaceRequest, timeout=LONG_TIMEOUT)


def cmd_reboot(args):
    return _manager_call(args, "RebootWorkspace", manager_pb2.RebootWorkspaceRequest, timeout=LONG_TIMEOUT)


def cmd_destroy(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    ws = conn.repository().DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=name), timeout=TIMEOUT).workspace
    if args.wait and ws.state != W.STATE_TERMINATED:
        ws = wait_for(conn, name, {W.STATE_TERMINATED}, args.timeout)
    emit(args, ws, lambda w: print(f"{w.name}  {state_name(w.state)}  {w.state_message}"))
    return 0


def cmd_migrate(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    destination = args.to if args.to.startswith("managers/") else f"managers/{args.to}"
    names.parse_manager_name(destination, "--to")
    ws = conn.get(name)
    stub, address = conn.manager_of(ws)
    bar = out.ProgressBar(sys.stderr)
    result = None
    try:
        for msg in stub.MigrateWorkspace(manager_pb2.MigrateWorkspaceRequest(name=name, destination=destination),
                                         timeout=args.timeout):
            if msg.WhichOneof("event") == "progress":
                bar.show(msg.progress)
            else:
                result = msg.result
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNAVAILABLE and not exc.details().startswith("migration"):
            raise CliError(f"cannot reach {ws.endpoint.manager} at {address}, which holds {name}", 3) from None
        raise
    finally:
        bar.show(None)
    if result is None:
        raise CliError(f"{ws.endpoint.manager} ended the migration of {name} without an outcome; "
                       f"`vws show {name}` says where it is")
    if args.output == "json":
        out.print_json(out.to_dict(result))
        return 0
    w = result.workspace
    rate = out.rate(result.total_bytes / result.seconds) if result.seconds > 0 else "-"
    print(f"{w.name}  {state_name(w.state)}  on {result.destination} ({w.endpoint.manager_address}), "
          f"{host_noun(w.spec.kind)} {w.endpoint.host_identity or '-'}")
    print(f"moved {out.size(result.total_bytes) or '0B'} from {result.source} in {result.seconds:.1f}s ({rate}): "
          f"{out.size(result.sent_bytes) or '0B'} sent, {out.size(result.reused_bytes) or '0B'} already there or "
          f"empty" + (f"; resumed {result.resumes} time(s) after a broken transfer" if result.resumes else ""))
    return 0


def cmd_extend(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    req = repository_pb2.UpdateTerminationTimeRequest(name=name)
    if args.to:
        import datetime as dt
        try:
            when = dt.datetime.fromisoformat(args.to)
        except ValueError:
            raise CliError(f"--to {args.to!r}: write a time like 2026-12-01T18:00 (local) or with +00:00") from None
        if when.tzinfo is None:
            when = when.astimezone()
        req.termination_time.FromDatetime(when.astimezone(dt.timezone.utc))
    else:
        if not args.by:
            raise CliError("say how long: vws extend NAME 2h (or --to TIME)")
        req.extend_by.FromTimedelta(units.parse_duration(args.by, "BY"))
    ws = conn.repository().UpdateTerminationTime(req, timeout=TIMEOUT).workspace
    emit(args, ws, lambda w: print(f"{w.name} terminates at {out.when(w.termination_time)} "
                                   f"(in {out.remaining(w.termination_time)})"))
    return 0


def cmd_managers(args) -> int:
    conn = Connection(args)
    r = conn.repository().ListManagers(repository_pb2.ListManagersRequest(page_size=1000), timeout=TIMEOUT)
    if args.output == "json":
        out.print_json({"managers": [out.to_dict(m) for m in r.managers]})
        return 0
    M = workspace_pb2.Manager
    rows = [[m.name.split("/", 1)[1], out.enum_name(M.State, m.state, "STATE_"), m.address, m.backend,
             m.account_pool or "-", f"{m.allocated.workspaces}/{m.capacity.workspaces}",
             f"{out.size(m.allocated.memory_bytes)}/{out.size(m.capacity.memory_bytes)}",
             f"{m.allocated.cpu_millis}m/{m.capacity.cpu_millis}m", out.when(m.heartbeat_time)]
            for m in r.managers]
    print(out.table(rows, ["NAME", "STATE", "ADDRESS", "BACKEND", "POOL", "WORKSPACES", "MEMORY", "CPU",
                           "LAST HEARTBEAT"]))
    return 0


def cmd_site(args) -> int:
    conn = Connection(args)
    s = conn.site()

    def human(s):
        print(f"factory:     {conn.factory_address}\nrepository:  {s.repository_address}\n"
              f"managers:    {s.available_managers} available")
        for k in s.kinds:
            print(f"kind {kind_name(k.kind):8} {'yes' if k.available else 'no ':4} {k.reason}")
        d, m = s.default_resources, s.max_resources
        print(f"memory      default {out.size(d.memory_bytes)}, max {out.size(m.memory_bytes)}")
        print(f"disk        default {out.size(d.disk_bytes)}, max {out.size(m.disk_bytes)}")
        print(f"cpu         default {out.cpu(d.cpu_millis)}, max {out.cpu(m.cpu_millis)}")
        print(f"bandwidth   default {out.bandwidth(d.network_bits_per_second)}, "
              f"max {out.bandwidth(m.network_bits_per_second)}")
        print(f"lifetime    default {units.format_duration(s.default_lifetime.ToTimedelta())}, "
              f"max {units.format_duration(s.max_lifetime.ToTimedelta())}")
        try:
            images = conn.repository().ListImages(repository_pb2.ListImagesRequest(
                owner=conn.identity(), page_size=1000), timeout=TIMEOUT).images
        except grpc.RpcError:
            return
        print("images      " + (", ".join(i.name.split("/", 1)[1] for i in images) + " (vws image list)"
                                 if images else "none yet (vws image add)"))
    emit(args, s, human)
    return 0


def cmd_exec(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("give the program to run: vws exec NAME -- CMD [ARGS...]", 2)
    env = pairs(args.env, "--env")
    ws = conn.get(name)
    stub, address = conn.manager_of(ws)
    first = manager_pb2.ExecRequest(name=name, argv=argv, environment=env, working_directory=args.workdir or "")
    stdin_is_live = not args.no_stdin

    def requests():
        if not stdin_is_live:
            first.close_stdin = True
            yield first
            return
        yield first
        fd = sys.stdin.fileno() if sys.stdin else -1
        while True:
            try:
                chunk = os.read(fd, 64 * 1024) if fd >= 0 else b""
            except OSError:
                chunk = b""
            if not chunk:
                yield manager_pb2.ExecRequest(close_stdin=True)
                return
            yield manager_pb2.ExecRequest(stdin=chunk)

    call = stub.Exec(requests())
    code = 0
    try:
        for msg in call:
            which = msg.WhichOneof("output")
            if which == "stdout":
                sys.stdout.buffer.write(msg.stdout)
                sys.stdout.buffer.flush()
            elif which == "stderr":
                sys.stderr.buffer.write(msg.stderr)
                sys.stderr.buffer.flush()
            elif which == "exit_status":
                code = msg.exit_status.code
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            raise CliError(f"cannot reach {ws.endpoint.manager} at {address}, which holds {name}", 3) from None
        raise
    except KeyboardInterrupt:
        call.cancel()
        return 130
    return code


def _when(text: str, flag: str):
    """A time as ISO 8601 (local when it has no zone), or a duration meaning that long ago (7d)."""
    import datetime as dt
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        try:
            return dt.datetime.now(dt.timezone.utc) - units.parse_duration(text, flag)
        except errors.InvalidArgument:
            raise CliError(f"{flag} {text!r}: write a time like 2026-12-01T18:00 (local) or with +00:00, "
                           "or how long ago, like 7d", 2) from None
    return (when.astimezone() if when.tzinfo is None else when).astimezone(dt.timezone.utc)


def show_usage(u) -> None:
    import datetime as dt
    gib_hours = u.memory_byte_seconds / 1024 ** 3 / 3600
    rows = [
        ("name", u.name), ("final", "yes" if u.final else "no"),
        ("first sample", out.when(u.start_time)), ("latest sample", out.when(u.end_time)),
        ("wall time", units.format_duration(dt.timedelta(seconds=u.wall_seconds))
         if u.wall_seconds else "-"),
        ("cpu seconds", f"{u.cpu_seconds:.2f}"),
        ("memory current", out.size(u.memory_current_bytes)), ("memory peak", out.size(u.memory_peak_bytes)),
        ("memory GiB-hours", f"{gib_hours:.4f}"), ("disk used", out.size(u.disk_used_bytes)),
        ("network received", out.size(u.network_rx_bytes)), ("network sent", out.size(u.network_tx_bytes)),
        ("time at memory limit", f"{u.seconds_at_memory_limit:.1f}s"),
        ("time at cpu limit", f"{u.seconds_at_cpu_limit:.1f}s"),
        ("oom kills", str(u.oom_kills)), ("samples", str(u.samples)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")


def cmd_usage(args) -> int:
    conn = Connection(args)
    if args.export:
        if args.name:
            raise CliError("give either NAME (one workspace's usage) or --export (usage records), not both", 2)
        req = repository_pb2.ExportUsageRecordsRequest(owner=args.owner or "")
        if args.since:
            req.start_time.FromDatetime(_when(args.since, "--since"))
        if args.until:
            req.end_time.FromDatetime(_when(args.until, "--until"))
        r = conn.repository().ExportUsageRecords(req, timeout=TIMEOUT)
        if args.out:
            try:
                pathlib.Path(args.out).write_text(r.usage_records_xml)
            except OSError as exc:
                raise CliError(f"--out {args.out}: {exc.strerror}")
            print(f"{r.record_count} usage record{'s' if r.record_count != 1 else ''} written to {args.out}",
                  file=sys.stderr)
        else:
            sys.stdout.write(r.usage_records_xml)
        return 0
    if not args.name:
        raise CliError("give the workspace: vws usage NAME (or --export for usage records)", 2)
    if args.owner or args.since or args.until or args.out:
        raise CliError("--owner, --since, --until and --out go with --export", 2)
    u = conn.repository().GetUsage(repository_pb2.GetUsageRequest(name=workspace_name(args.name)),
                                   timeout=TIMEOUT).usage
    if args.output == "json":
        from google.protobuf import json_format
        out.print_json(json_format.MessageToDict(u, preserving_proto_field_name=True,
                                                 always_print_fields_with_no_presence=True))
    else:
        show_usage(u)
    return 0


# --------------------------------------------------------------------------- images
IMAGE_FLAGS = {IMG_FILE.ROLE_KERNEL: "kernel", IMG_FILE.ROLE_INITRD: "initrd", IMG_FILE.ROLE_DISK: "disk"}


def boot_name(value: int) -> str:
    return out.enum_name(IMG.Boot, value, "BOOT_").lower()


def show_image(image) -> None:
    rows = [
        ("name", image.name), ("boot", boot_name(image.boot)), ("owner", image.owner or "-"),
        ("visibility", out.enum_name(IMG.Visibility, image.visibility, "VISIBILITY_").lower()),
        ("guest agent", "yes" if image.guest_agent else "no"),
        ("kernel args", image.kernel_args or "-"), ("description", image.description or "-"),
        ("size", out.size(image.size_bytes)), ("created", out.when(image.create_time)),
    ]
    for f in image.files:
        role = out.enum_name(IMG_FILE.Role, f.role, "ROLE_").lower()
        rows.append((role, f"{out.size(f.size_bytes)} {out.enum_name(IMG_FILE.Format, f.format, 'FORMAT_').lower()}"))
        rows += [("  digest", f.digest), ("  stored at", f.location)]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")


def _image_flags_in(text: str, flags: dict[int, str]) -> str:
    """A field path of CreateImage in an error, as the flag that gave it."""
    for i, flag in flags.items():
        for field, shown in ((f"image.files[{i}].location", f"--{flag}"),
                             (f"image.files[{i}].digest", f"--{flag}-digest"),
                             (f"image.files[{i}].format", "--format"),
                             (f"image.files[{i}].role", f"--{flag}")):
            text = text.replace(field, shown)
    for field, shown in (("image_id", "NAME"), ("image.kernel_args", "--kernel-args"),
                         ("image.description", "--description")):
        text = text.replace(field, shown)
    return text


def cmd_image_add(args) -> int:
    conn = Connection(args)
    image_id = names.parse_image_name(args.name, "NAME")
    if bool(args.kernel) == bool(args.disk):
        raise CliError("give --kernel FILE (and optionally --initrd FILE) for an image booted by the hypervisor, "
                       "or --disk FILE for one that boots from its disk; not both", 2)
    for flag, value, needs, given in (
            ("--initrd", args.initrd, "--kernel", args.kernel),
            ("--kernel-args", args.kernel_args, "--kernel", args.kernel),
            ("--kernel-digest", args.kernel_digest, "--kernel", args.kernel),
            ("--initrd-digest", args.initrd_digest, "--initrd", args.initrd),
            ("--format", args.format, "--disk", args.disk),
            ("--disk-digest", args.disk_digest, "--disk", args.disk)):
        if value and not given:
            raise CliError(f"{flag} goes with {needs}", 2)
    image = image_pb2.Image(
        boot=IMG.BOOT_KERNEL if args.kernel else IMG.BOOT_DISK,
        visibility=IMG.VISIBILITY_PUBLIC if args.public else IMG.VISIBILITY_PRIVATE,
        kernel_args=args.kernel_args or "", description=args.description or "", guest_agent=not args.no_agent)
    flags: dict[int, str] = {}
    for role, path, digest in ((IMG_FILE.ROLE_KERNEL, args.kernel, args.kernel_digest),
                               (IMG_FILE.ROLE_INITRD, args.initrd, args.initrd_digest),
                               (IMG_FILE.ROLE_DISK, args.disk, args.disk_digest)):
        if not path:
            continue
        fmt = IMG_FILE.FORMAT_UNSPECIFIED
        if role == IMG_FILE.ROLE_DISK and args.format:
            fmt = IMG_FILE.FORMAT_QCOW2 if args.format == "qcow2" else IMG_FILE.FORMAT_RAW
        flags[len(image.files)] = IMAGE_FLAGS[role]
        # The repository reads the file itself: it needs the whole path.
        image.files.add(role=role, format=fmt, digest=digest or "", location=os.path.abspath(path))
    try:
        r = conn.repository().CreateImage(repository_pb2.CreateImageRequest(
            image_id=image_id, image=image, owner=getpass.getuser()), timeout=args.timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code is grpc.StatusCode.UNAVAILABLE:
            raise conn.unreachable("repository", conn._repository_address or "?") from None
        raise CliError(_image_flags_in(describe_rpc_error(exc), flags),
                       2 if code is grpc.StatusCode.INVALID_ARGUMENT else 1) from None
    emit(args, r.image, lambda i: print(f"{i.name}  {boot_name(i.boot)}  {out.size(i.size_bytes)}  "
                                        f"{out.enum_name(IMG.Visibility, i.visibility, 'VISIBILITY_').lower()}"))
    return 0


def cmd_image_list(args) -> int:
    conn = Connection(args)
    req = repository_pb2.ListImagesRequest(owner="" if args.all else conn.identity(), page_size=1000)
    found = []
    while True:
        r = conn.repository().ListImages(req, timeout=TIMEOUT)
        found.extend(r.images)
        if not r.next_page_token:
            break
        req.page_token = r.next_page_token
    if args.output == "json":
        out.print_json({"images": [out.to_dict(i) for i in found]})
        return 0
    rows = [[i.name.split("/", 1)[1], boot_name(i.boot), out.size(i.size_bytes),
             out.enum_name(IMG.Visibility, i.visibility, "VISIBILITY_").lower(), i.owner or "-",
             "yes" if i.guest_agent else "no", out.when(i.create_time), i.description or "-"] for i in found]
    print(out.table(rows, ["NAME", "BOOT", "SIZE", "VISIBILITY", "OWNER", "AGENT", "CREATED", "DESCRIPTION"]))
    return 0


def cmd_image_show(args) -> int:
    conn = Connection(args)
    image = conn.repository().GetImage(repository_pb2.GetImageRequest(name=image_name(args.name)),
                                       timeout=TIMEOUT).image
    emit(args, image, show_image)
    return 0


def cmd_image_rm(args) -> int:
    conn = Connection(args)
    name = image_name(args.name)
    conn.repository().DeleteImage(repository_pb2.DeleteImageRequest(name=name), timeout=TIMEOUT)
    print(f"{name} removed")
    return 0


# --------------------------------------------------------------------------- services
def run_service(section: str):
    def runner(args) -> int:
        if not args.data_dir and args.global_data_dir:
            args.data_dir = args.global_data_dir
        flags = {k: v for k, v in vars(args).items() if k not in ("fn", "command", "endpoint", "global_data_dir",
                                                                   "log_level")}
        settings = config.load(section, flags)
        setup_logging(args.log_level)
        module = {"repository": "vws.repository.server", "factory": "vws.factory.server",
                  "manager": "vws.manager.server"}[section]
        import importlib
        return importlib.import_module(module).run(settings)
    return runner


def setup_logging(level: str | None) -> None:
    level = (level or os.environ.get("VWS_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_up(args) -> int:
    from . import stack
    return stack.up(args)


def cmd_down(args) -> int:
    from . import stack
    return stack.down(args)


def cmd_status(args) -> int:
    from . import stack
    return stack.status(args)


# --------------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """Usage mistakes end as one line too, with where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vws", description="Virtual Workspaces: execution environments on demand.")
    p.add_argument("--endpoint", help="the factory, host:port (default: $VWS_ENDPOINT, the config file, "
                                      "then the stack `vws up` started)")
    p.add_argument("--data-dir", dest="global_data_dir", metavar="DIR", help="the stack's data directory (default: $VWS_DATA_DIR or "
                                      f"{config.default_data_dir()})")
    g = p.add_argument_group("credentials (default: found as `vws whoami` shows; see README, Security)")
    g.add_argument("--cert", help="your certificate (PEM; mutual TLS), with --key (default: $X509_USER_CERT)")
    g.add_argument("--key", help="its private key (default: the --cert file, or $X509_USER_KEY)")
    g.add_argument("--proxy", help="a VOMS proxy (voms-proxy-init makes one; default: $X509_USER_PROXY, then "
                                   "/tmp/x509up_u<uid>), logged in once per session")
    g.add_argument("--token", help="a WLCG bearer token, or @FILE (default: $BEARER_TOKEN, $BEARER_TOKEN_FILE)")
    g.add_argument("--ca", help="the site's CA certificate, to check the services with (default: $VWS_CA, then "
                                "DATA_DIR/pki/ca.pem)")
    g.add_argument("--insecure", action="store_true", help="plain text, for a stack started with --insecure "
                                                          "(loopback only)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, fn, help, read=False):
        c = sub.add_parser(name, help=help, description=help)
        if fn is not None:
            c.set_defaults(fn=fn)
        if read:
            c.add_argument("-o", "--output", choices=["table", "json"], default="table",
                           help="table for people (default), json for programs")
        return c

    for section, help in (("repository", "run the Repository service (system of record)"),
                          ("factory", "run the Factory service (admission and placement)"),
                          ("manager", "run a Manager service (realises workspaces on this host)")):
        c = sub.add_parser(section, help=help, description=help)
        config.add_arguments(c, section)
        c.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
        c.set_defaults(fn=run_service(section))

    c = command("up", cmd_up, "start the repository, a factory and a manager on this machine")
    c.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the stack")
    c.add_argument("--repository-listen", default=None, help="host:port (default 127.0.0.1:7701)")
    c.add_argument("--factory-listen", default=None, help="host:port (default 127.0.0.1:7702)")
    c.add_argument("--manager-listen", default=None, help="host:port (default 127.0.0.1:7703)")
    c.add_argument("--backend", default=None, help="dynamic-accounts (default) or account-pool")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the services to answer")
    command("down", cmd_down, "stop the stack that `vws up` started")
    command("status", cmd_status, "show the services `vws up` started", read=True)
    command("site", cmd_site, "what this site offers: kinds, defaults and limits", read=True)

    c = command("create", cmd_create, "create a workspace", read=True)
    c.add_argument("--kind", choices=sorted(KINDS), default=None,
                   help="isolation (default account; vm when --image is given)")
    c.add_argument("--memory", help="exactly this much memory, e.g. 512M, 2G")
    c.add_argument("--disk", help="at least this much disk, e.g. 10G")
    c.add_argument("--cpu", help="CPU in millicores (500m) or cores (2)")
    c.add_argument("--bandwidth", help="network bandwidth in bits/s, e.g. 100M")
    c.add_argument("--processes", type=int, help="the most processes it may run at once")
    c.add_argument("--lifetime", help="how long it lives, e.g. 2h, 1d (default: the site's)")
    c.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable (repeat)")
    c.add_argument("--setup-script", help="a script (file, or the text itself) run inside the new workspace")
    c.add_argument("--file", action="append", default=[], metavar="PATH=LOCAL",
                   help="stage LOCAL into the workspace's home at PATH (repeat)")
    c.add_argument("--image", help="the image a virtual machine boots: images/{id} or just the id, e.g. busybox "
                                   "(`vws image list` shows them)")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeat)")
    c.add_argument("--no-start", action="store_true", help="leave it READY, not RUNNING")
    c.add_argument("--wait", action="store_true", help="return only when it is RUNNING (READY with --no-start); "
                                                       "shows the image copy's progress on a terminal")
    c.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    c.add_argument("--request-id", help="make the request retryable: the same id never makes a second workspace")

    c = command("list", cmd_list, "list workspaces (all but TERMINATED unless --state/--all)", read=True)
    c.add_argument("--state", action="append", default=[], help="only in this state (repeat)")
    c.add_argument("--all", action="store_true", help="every state, TERMINATED included")
    c.add_argument("--owner", help="only this owner's")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="only with this label (repeat)")
    c.add_argument("--manager", help="only on this manager")
    c.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    c.add_argument("--page-token", help="continue a previous listing")

    for name, fn, help in (("show", cmd_show, "show one workspace"),
                           ("events", cmd_events, "a workspace's history")):
        command(name, fn, help, read=True).add_argument("name", metavar="NAME")
    for name, fn, help in (("start", cmd_start, "start a READY workspace"),
                           ("stop", cmd_stop, "stop it: every process killed, the account locked; a virtual "
                                              "machine is shut down (forced off if it does not power off in time)"),
                           ("pause", cmd_pause, "freeze every process of a RUNNING workspace"),
                           ("resume", cmd_resume, "thaw a PAUSED workspace, or restore a SUSPENDED one"),
                           ("suspend", cmd_suspend, "save a RUNNING or PAUSED virtual machine (its memory and disk) "
                                                    "and release its CPU and memory: SUSPENDED until vws resume"),
                           ("reboot", cmd_reboot, "restart the guest of a RUNNING virtual machine")):
        c = command(name, fn, help, read=True)
        c.add_argument("name", metavar="NAME")
        if name == "stop":
            c.add_argument("--force", action="store_true",
                           help="skip the graceful shutdown: a virtual machine is powered off at once")
    c = command("destroy", cmd_destroy, "destroy a workspace (its account and files go)", read=True)
    c.add_argument("name", metavar="NAME")
    c.add_argument("--wait", action="store_true", help="return when it is TERMINATED")
    c.add_argument("--timeout", type=float, default=120.0)
    c = command("migrate", cmd_migrate, "move a workspace to another manager; it keeps its name and state",
                read=True)
    c.description = (
        "Move a workspace to another manager, where it carries on under the same name and in the same state: "
        "a virtual machine with its memory and disk, an account or sandbox workspace with its files. Only what "
        "the destination lacks is sent, a broken transfer resumes from its last verified chunk, and if anything "
        "fails the workspace is back where it was, as it was. Running processes of account and sandbox "
        "workspaces do not move: they are frozen while the files are copied and end when it arrives, where it "
        "starts afresh (RUNNING, with no processes). A virtual machine's processes move with its memory.")
    c.add_argument("name", metavar="NAME")
    c.add_argument("--to", required=True, metavar="MANAGER", help="the destination, e.g. host-2 or managers/host-2 "
                                                                  "(`vws managers` lists them)")
    c.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait (default 3600)")
    c = command("extend", cmd_extend, "move a workspace's termination time", read=True)
    c.add_argument("name", metavar="NAME")
    c.add_argument("by", nargs="?", help="how much longer from its current termination time, e.g. 2h")
    c.add_argument("--to", help="a new termination time instead, e.g. 2026-12-01T18:00")
    command("managers", cmd_managers, "the managers registered with the repository", read=True)
    c = command("usage", cmd_usage, "what a workspace used (CPU, memory, disk, network), or --export every "
                "workspace's usage as OGF Usage Records (GFD.204) for grid accounting", read=True)
    c.add_argument("name", metavar="NAME", nargs="?")
    c.add_argument("--export", action="store_true", help="print usage records (XML) instead")
    c.add_argument("--owner", help="with --export: only this owner's workspaces")
    c.add_argument("--since", metavar="TIME", help="with --export: workspaces that ran at or after TIME "
                                                   "(2026-12-01T00:00, or how long ago: 7d)")
    c.add_argument("--until", metavar="TIME", help="with --export: workspaces that ran before TIME")
    c.add_argument("--out", metavar="FILE", help="with --export: write the XML to FILE")

    c = command("image", None, "the virtual-machine images: vws image add|list|show|rm")
    isub = c.add_subparsers(dest="image_command", metavar="IMAGE_COMMAND")
    isub.required = True

    def image_command(name, fn, help, read=False):
        ic = isub.add_parser(name, help=help, description=help)
        ic.set_defaults(fn=fn)
        if read:
            ic.add_argument("-o", "--output", choices=["table", "json"], default="table",
                            help="table for people (default), json for programs")
        return ic
    ic = image_command("add", cmd_image_add, "add an image to the catalogue: the repository copies its files "
                       "(from paths on its host) into its image store and records their digests", read=True)
    ic.add_argument("name", metavar="NAME", help="its id (lower case letters, digits, '-'), e.g. busybox")
    ic.add_argument("--kernel", metavar="FILE", help="a kernel the hypervisor loads directly")
    ic.add_argument("--initrd", metavar="FILE", help="with --kernel: its initial RAM disk")
    ic.add_argument("--kernel-args", metavar="ARGS", help="with --kernel: kernel command-line arguments, "
                                                          "e.g. 'console=ttyS0'")
    ic.add_argument("--disk", metavar="FILE", help="instead of --kernel: a disk that boots by itself")
    ic.add_argument("--format", choices=["raw", "qcow2"], help="with --disk: its format (default: what the file says)")
    for role in ("kernel", "initrd", "disk"):
        ic.add_argument(f"--{role}-digest", metavar="DIGEST",
                        help=f"refuse the {role} unless its digest is this (blake3-4m:...)")
    ic.add_argument("--public", action="store_true", help="everyone may boot it (default: only you)")
    ic.add_argument("--description", metavar="TEXT")
    ic.add_argument("--no-agent", action="store_true",
                    help="the guest runs no QEMU guest agent (vws exec cannot run programs in it)")
    ic.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the copy (default 600)")
    ic = image_command("list", cmd_image_list, "the images you may boot: public ones and your own", read=True)
    ic.add_argument("--all", action="store_true", help="every image, whoever's")
    image_command("show", cmd_image_show, "show one image: its files, digests and where they are kept",
                  read=True).add_argument("name", metavar="NAME")
    image_command("rm", cmd_image_rm, "remove an image (workspaces booted from it keep running)").add_argument(
        "name", metavar="NAME")

    from . import fftbench  # here, not at the top: it builds on this module
    fftbench.add_parser(sub, command)

    access.add_parsers(command)

    c = command("exec", cmd_exec, "run a program in a workspace; exits with its code")
    c.add_argument("name", metavar="NAME")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    c.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--workdir", help="working directory (default: the home)")
    c.add_argument("--no-stdin", action="store_true", help="do not forward standard input")
    return p


def describe_rpc_error(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    extra = []
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status
        status = rpc_status.from_call(exc)
        for d in status.details if status else []:
            if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                d.Unpack(br)
                extra += [f"{v.field}: {v.description}" for v in br.field_violations]
    except Exception:  # noqa: BLE001 - details are a bonus; the message stands alone
        pass
    text = details or ""
    if extra and not all(e in text for e in extra):
        text = "; ".join(extra)
    if code is grpc.StatusCode.UNAVAILABLE:
        text += credentials.explain_unavailable(exc)
    return f"{code.name if code else 'ERROR'}: {text}"


# Commands that make no calls as a user (the services run as themselves; `up` sets up the
# credentials once the stack's PKI is there).
NO_CREDENTIALS = {"repository", "factory", "manager", "up", "down", "status"}


def use_credentials(args) -> credentials.Choice:
    """Finds the user's credential and sets up the process's calls with it (once per command)."""
    if getattr(args, "credential", None) is None:
        args.credential = True  # set first: Connection(args) below must not come back here
        try:
            args.credential = credentials.configure(args, data_dir(args),
                                                    repository_address=Connection(args).repository_address)
        except errors.VwsError as exc:
            if factory_address(args)[1] == "the default" and config.read_run_file(data_dir(args), "factory") is None:
                raise CliError(f"{exc.message}. No stack runs in {data_dir(args)}: start one with `vws up`, or point "
                               "at a site with --endpoint (or VWS_ENDPOINT) and --ca", 3) from None
            raise
    return args.credential


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except CliError as exc:
        print(f"vws: {exc}", file=sys.stderr)
        return exc.code
    except errors.VwsError as exc:
        print(f"vws: {type(exc).__name__.replace('InvalidArgument', 'invalid argument')}: {exc.message}"
              if not isinstance(exc, errors.InvalidArgument) else f"vws: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, errors.InvalidArgument) else 1
    except grpc.RpcError as exc:
        print(f"vws: {describe_rpc_error(exc)}", file=sys.stderr)
        return 2 if getattr(exc, "code", lambda: None)() is grpc.StatusCode.INVALID_ARGUMENT else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - never a traceback for a user
        if os.environ.get("VWS_DEBUG"):
            raise
        print(f"vws: unexpected error: {type(exc).__name__}: {exc} (VWS_DEBUG=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
