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

from vws.cli import output as out
from vws.common import clients, config, errors, names, units
from vws.v1 import (factory_pb2, manager_pb2, repository_pb2, workspace_pb2)

W = workspace_pb2.Workspace
KINDS = {"account": workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT,
         "sandbox": workspace_pb2.WorkspaceSpec.KIND_SANDBOX,
         "vm": workspace_pb2.WorkspaceSpec.KIND_VIRTUAL_MACHINE}
TIMEOUT = 30.0
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

    def unreachable(self, what: str, address: str) -> CliError:
        return CliError(f"cannot reach the {what} at {address} (from {self.source}); is the stack running? "
                        "Start it with `vws up`, or point at it with --endpoint or VWS_ENDPOINT", 3)

    def factory(self):
        return clients.factory(self.factory_address)

    def site(self) -> factory_pb2.GetSiteInfoResponse:
        try:
            return self.factory().GetSiteInfo(factory_pb2.GetSiteInfoRequest(), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise self.unreachable("factory", self.factory_address) from None
            raise

    def repository(self):
        if not self._repository_address:
            run = config.read_run_file(data_dir(self.args), "repository")
            if self.source.startswith("the stack") and run and run.get("address"):
                self._repository_address = run["address"]
            else:
                self._repository_address = self.site().repository_address
        return clients.repository(self._repository_address)

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


def kind_name(value: int) -> str:
    return {v: k for k, v in KINDS.items()}.get(value, "?")


def workspace_name(text: str) -> str:
    name = names.normalise_workspace_name(text)
    names.parse_workspace_name(name, "NAME")
    return name


# --------------------------------------------------------------------------- printing
def show_workspace(ws: W) -> None:
    spec, r = ws.spec, ws.spec.resources
    rows = [
        ("name", ws.name), ("state", state_name(ws.state)), ("message", ws.state_message or "-"),
        ("kind", kind_name(spec.kind)), ("manager", ws.endpoint.manager or "-"),
        ("manager address", ws.endpoint.manager_address or "-"), ("account", ws.endpoint.host_identity or "-"),
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
    spec = workspace_pb2.WorkspaceSpec(kind=KINDS[args.kind])
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
                           args.timeout)
    if args.output == "json":
        out.print_json(out.to_dict(r if not args.wait else factory_pb2.CreateWorkspaceResponse(
            workspace=created, endpoint=created.endpoint)))
    else:
        print(f"{created.name}  {state_name(created.state)}  on {created.endpoint.manager} "
              f"({created.endpoint.manager_address}), account {created.endpoint.host_identity or '-'}")
    return 0 if created.state != W.STATE_FAILED else 1


def wait_for(conn: Connection, name: str, targets: set[int], timeout: float) -> W:
    """Follows the workspace's changes (WatchWorkspace) until it reaches a target state."""
    call = conn.repository().WatchWorkspace(repository_pb2.WatchWorkspaceRequest(name=name), timeout=timeout)
    last = None
    try:
        for msg in call:
            last = msg.workspace
            if last.state in targets:
                return last
            if last.state in (W.STATE_FAILED, W.STATE_TERMINATED) and last.state not in targets:
                raise CliError(f"{name} is {state_name(last.state)}: {last.state_message}")
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CliError(f"gave up waiting for {name} after {timeout:g}s; it is "
                           f"{state_name(last.state) if last else 'unknown'}", 4) from None
        raise
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
    print(out.table(rows, ["NAME", "STATE", "KIND", "MANAGER", "ACCOUNT", "MEMORY", "CPU", "EXPIRES IN", "OWNER"]))
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


def _manager_call(args, method: str, request_type):
    conn = Connection(args)
    name = workspace_name(args.name)
    ws = conn.get(name)
    stub, address = conn.manager_of(ws)
    try:
        r = getattr(stub, method)(request_type(name=name), timeout=TIMEOUT)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNAVAILABLE:
            raise CliError(f"cannot reach {ws.endpoint.manager} at {address}, which holds {name}", 3) from None
        raise
    emit(args, r.workspace, lambda w: print(f"{w.name}  {state_name(w.state)}  {w.state_message}"))
    return 0


def cmd_start(args):
    return _manager_call(args, "StartWorkspace", manager_pb2.StartWorkspaceRequest)


def cmd_stop(args):
    return _manager_call(args, "StopWorkspace", manager_pb2.StopWorkspaceRequest)


def cmd_pause(args):
    return _manager_call(args, "PauseWorkspace", manager_pb2.PauseWorkspaceRequest)


def cmd_resume(args):
    return _manager_call(args, "ResumeWorkspace", manager_pb2.ResumeWorkspaceRequest)


def cmd_destroy(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    ws = conn.repository().DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=name), timeout=TIMEOUT).workspace
    if args.wait and ws.state != W.STATE_TERMINATED:
        ws = wait_for(conn, name, {W.STATE_TERMINATED}, args.timeout)
    emit(args, ws, lambda w: print(f"{w.name}  {state_name(w.state)}  {w.state_message}"))
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
             f"{m.allocated.workspaces}/{m.capacity.workspaces}",
             f"{out.size(m.allocated.memory_bytes)}/{out.size(m.capacity.memory_bytes)}",
             f"{m.allocated.cpu_millis}m/{m.capacity.cpu_millis}m", out.when(m.heartbeat_time)]
            for m in r.managers]
    print(out.table(rows, ["NAME", "STATE", "ADDRESS", "BACKEND", "WORKSPACES", "MEMORY", "CPU", "LAST HEARTBEAT"]))
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
    from vws.cli import stack
    return stack.up(args)


def cmd_down(args) -> int:
    from vws.cli import stack
    return stack.down(args)


def cmd_status(args) -> int:
    from vws.cli import stack
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
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, fn, help, read=False):
        c = sub.add_parser(name, help=help, description=help)
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
    c.add_argument("--kind", choices=sorted(KINDS), default="account", help="isolation (default account)")
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
    c.add_argument("--image", help="image to boot (virtual machines)")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeat)")
    c.add_argument("--no-start", action="store_true", help="leave it READY, not RUNNING")
    c.add_argument("--wait", action="store_true", help="return only when it is RUNNING (READY with --no-start)")
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
                           ("stop", cmd_stop, "stop it: every process killed, the account locked"),
                           ("pause", cmd_pause, "freeze every process of a RUNNING workspace"),
                           ("resume", cmd_resume, "thaw a PAUSED workspace")):
        command(name, fn, help, read=True).add_argument("name", metavar="NAME")
    c = command("destroy", cmd_destroy, "destroy a workspace (its account and files go)", read=True)
    c.add_argument("name", metavar="NAME")
    c.add_argument("--wait", action="store_true", help="return when it is TERMINATED")
    c.add_argument("--timeout", type=float, default=120.0)
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
    return f"{code.name if code else 'ERROR'}: {text}"


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
        return 1
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
