"""`vws site`, `vws create`, `list`, `show`, `events`, `start`, `stop`, `pause`, `resume`,
`suspend`, `reboot`, `destroy`, `migrate`, `extend` and `vws managers`: what the site offers,
the workspaces' lifecycle, and the managers that hold them."""
from __future__ import annotations

import datetime as dt
import getpass
import os
import pathlib
import sys
import time
import uuid

import grpc

from . import output as out
from .connection import (LONG_TIMEOUT, TIMEOUT, CliError, Connection, host_noun, kind_name, pairs, reaching,
                         state_name, wait_for, wire_kind, workspace_name)
from ..common import errors, kinds, names, units
from ..v1 import factory_pb2, manager_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace


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


# --------------------------------------------------------------------------- commands
def cmd_site(args) -> int:
    conn = Connection(args)
    s = conn.site()

    def human(s):
        print(f"factory:     {conn.factory_address}\nrepository:  {s.repository_address}\n"
              f"managers:    {s.available_managers} available")
        resources = (("memory", "memory_bytes", out.size), ("disk", "disk_bytes", out.size),
                     ("cpu", "cpu_millis", out.cpu), ("bandwidth", "network_bits_per_second", out.bandwidth),
                     ("processes", "max_processes", str))
        d, m, f = s.default_resources, s.max_resources, s.min_resources
        for k in s.kinds:
            raised = [f"{fmt(getattr(k.min_resources, field))} {what}" for what, field, fmt in resources
                      if getattr(k.min_resources, field) > getattr(f, field)]
            print(f"kind {kind_name(k.kind):8} {'yes' if k.available else 'no ':4} {k.reason}"
                  + (f" (at least {', '.join(raised)})" if raised else ""))
        for what, field, fmt in resources:
            print(f"{what:<11} min {fmt(getattr(f, field))}, default {fmt(getattr(d, field))}, "
                  f"max {fmt(getattr(m, field))}")
        print(f"lifetime    default {units.format_duration(s.default_lifetime.ToTimedelta())}, "
              f"max {units.format_duration(s.max_lifetime.ToTimedelta())}")
        try:
            images = conn.repository().ListImages(repository_pb2.ListImagesRequest(
                owner=conn.identity(), page_size=1000), timeout=TIMEOUT).images
        except grpc.RpcError:
            return
        print("images      " + (", ".join(i.name.split("/", 1)[1] for i in images) + " (vws image list)"
                                 if images else "none yet (vws image add)"))
    out.emit(args, s, human)
    return 0


# A create cut off (the factory restarting, a connection lost) is sent again with the same
# request_id, which the factory answers with the workspace it made, never a second one.
CREATE_ATTEMPTS = 4
CREATE_BACKOFF = 1.0  # seconds before the first retry, doubled before each next one


def create_workspace(conn: Connection, request: factory_pb2.CreateWorkspaceRequest, timeout: float
                     ) -> factory_pb2.CreateWorkspaceResponse:
    """CreateWorkspace, retried while the factory is UNAVAILABLE (CREATE_ATTEMPTS in all), saying
    so on stderr; the last failure goes on to the caller."""
    attempt, delay = 1, CREATE_BACKOFF
    while True:
        try:
            return conn.factory().CreateWorkspace(request, timeout=timeout)
        except grpc.RpcError as exc:
            error = errors.from_rpc_error(exc)
            if attempt == CREATE_ATTEMPTS or not isinstance(error, errors.Unavailable):
                raise
        attempt += 1
        print(f"vws: the factory at {conn.factory_address} is unavailable ({error.message[:200]}); retrying in "
              f"{delay:g}s with the same request id {request.request_id} (attempt {attempt} of {CREATE_ATTEMPTS})",
              file=sys.stderr)
        time.sleep(delay)
        delay *= 2


def cmd_create(args) -> int:
    conn = Connection(args)
    spec = workspace_pb2.WorkspaceSpec(kind=wire_kind(args.kind, image=bool(args.image)))
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
    request = factory_pb2.CreateWorkspaceRequest(request_id=args.request_id or str(uuid.uuid4()), workspace=ws)
    again = (f"the workspace may still be made: run the same command with --request-id {request.request_id} "
             "to get it (never a second one)")
    try:
        with reaching(CliError(f"{conn.unreachable('factory', conn.factory_address)}; {again}", 3)):
            r = create_workspace(conn, request, args.timeout)
    except grpc.RpcError as exc:
        if isinstance(errors.from_rpc_error(exc), errors.DeadlineExceeded):
            print(f"vws: {again}", file=sys.stderr)
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
    out.emit(args, conn.get(workspace_name(args.name)), show_workspace)
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
    with reaching(conn.manager_unreachable(ws, address)):
        r = getattr(stub, method)(request_type(name=name, **fields), timeout=timeout)
    out.emit(args, r.workspace, lambda w: print(f"{w.name}  {state_name(w.state)}  {w.state_message}"))
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
    out.emit(args, ws, lambda w: print(f"{w.name}  {state_name(w.state)}  {w.state_message}"))
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
    # An UNAVAILABLE about the migration (the destination, say) comes from a manager that answered.
    try:
        with reaching(conn.manager_unreachable(ws, address), unless="migration"):
            for msg in stub.MigrateWorkspace(manager_pb2.MigrateWorkspaceRequest(name=name, destination=destination),
                                             timeout=args.timeout):
                if msg.WhichOneof("event") == "progress":
                    bar.show(msg.progress)
                else:
                    result = msg.result
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
    out.emit(args, ws, lambda w: print(f"{w.name} terminates at {out.when(w.termination_time)} "
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


# --------------------------------------------------------------------------- parsers
def add_parsers(command) -> None:
    command("site", cmd_site, "what this site offers: kinds, defaults and limits", read=True)

    c = command("create", cmd_create, "create a workspace", read=True)
    c.add_argument("--kind", choices=sorted(kinds.names()), default=None,
                   help=f"isolation (default {kinds.of(kinds.default()).name}; "
                        f"{kinds.of(kinds.default(image=True)).name} when --image is given)")
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
    c.add_argument("--request-id", help="the create's id (default: a new one, told when the outcome is unknown): "
                   "the same id never makes a second workspace")

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
