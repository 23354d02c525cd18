"""`vws usage`: what a workspace used, or every workspace's usage as OGF Usage Records."""
from __future__ import annotations

import datetime as dt
import pathlib
import sys

from google.protobuf import json_format

from . import output as out
from .connection import TIMEOUT, CliError, Connection, workspace_name
from ..common import errors, units
from ..v1 import repository_pb2


def _when(text: str, flag: str):
    """A time as ISO 8601 (local when it has no zone), or a duration meaning that long ago (7d)."""
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
        out.print_json(json_format.MessageToDict(u, preserving_proto_field_name=True,
                                                 always_print_fields_with_no_presence=True))
    else:
        show_usage(u)
    return 0


def add_parsers(command) -> None:
    c = command("usage", cmd_usage, "what a workspace used (CPU, memory, disk, network), or --export every "
                "workspace's usage as OGF Usage Records (GFD.204) for grid accounting", read=True)
    c.add_argument("name", metavar="NAME", nargs="?")
    c.add_argument("--export", action="store_true", help="print usage records (XML) instead")
    c.add_argument("--owner", help="with --export: only this owner's workspaces")
    c.add_argument("--since", metavar="TIME", help="with --export: workspaces that ran at or after TIME "
                                                   "(2026-12-01T00:00, or how long ago: 7d)")
    c.add_argument("--until", metavar="TIME", help="with --export: workspaces that ran before TIME")
    c.add_argument("--out", metavar="FILE", help="with --export: write the XML to FILE")
