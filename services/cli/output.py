"""How the CLI prints: tables for people, JSON (`-o json`) for programs."""
from __future__ import annotations

import datetime as dt
import json
import sys

from google.protobuf import json_format

from vws.common import units


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=False)


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def enum_name(enum_type, value: int, prefix: str) -> str:
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name[len(prefix):] if name.startswith(prefix) else name


def when(ts) -> str:
    """A protobuf Timestamp as local time, or '-'."""
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=dt.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def remaining(ts) -> str:
    if not ts.seconds:
        return "-"
    left = ts.ToDatetime(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)
    return units.format_duration(left) if left.total_seconds() > 0 else "expired"


def size(n: int) -> str:
    return units.format_size(n) if n else "-"


def cpu(m: int) -> str:
    return f"{m}m" if m else "-"


def bandwidth(b: int) -> str:
    if not b:
        return "-"
    for unit, p in (("G", 3), ("M", 2), ("k", 1)):
        if b >= 1000 ** p:
            v = b / 1000 ** p
            return f"{v:g}{unit}bit/s"
    return f"{b}bit/s"
