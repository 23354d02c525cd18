"""How the CLI prints: tables for people, JSON (`-o json`) for programs."""
from __future__ import annotations

import datetime as dt
import json
import shutil
import sys

from google.protobuf import json_format

from ..common import units


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=False)


def print_json(value) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def emit(args, message, human) -> None:
    """The message as JSON with -o json, else as `human(message)` prints it."""
    if getattr(args, "output", "table") == "json":
        print_json(to_dict(message))
    else:
        human(message)


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


def rate(bytes_per_second: float) -> str:
    return f"{units.format_size(int(bytes_per_second))}/s" if bytes_per_second >= 1 else "-"


def progress_line(p) -> str:
    """A Progress message in one line: `propagating image busybox: 45% (28.8M of 64.0M, 8.1M/s)`."""
    label = p.activity or "working"
    speed = rate(p.bytes_per_second) if p.bytes_per_second >= 1 else ""
    if p.total_bytes:
        figures = f"{size(p.done_bytes) if p.done_bytes else '0B'} of {size(p.total_bytes)}"
        return f"{label}: {100 * p.done_bytes // p.total_bytes}% ({figures}{', ' + speed if speed else ''})"
    if p.done_bytes:
        return f"{label}: {size(p.done_bytes)}{f' ({speed})' if speed else ''}"
    return label


class ProgressBar:
    """A one-line bar on a terminal, redrawn in place; nothing at all when the stream is not a
    terminal (a log or a pipe gets no control characters)."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        try:
            self.live = self.stream.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self.drawn = False

    @staticmethod
    def line(label: str, done: int, total: int, figures: str, columns: int) -> str:
        """`label [####----]figures` fitted to columns (no bar when too narrow or no total)."""
        width = max(columns - len(label) - len(figures) - 4, 0)
        if width >= 10 and total:
            filled = width * min(max(done, 0), total) // total
            return f"{label} [{'#' * filled}{'-' * (width - filled)}]{figures}"
        return f"{label}{figures}"[:max(columns - 1, 0)]

    def render(self, p, columns: int) -> str:
        label = p.activity or "working"
        if p.total_bytes:
            done = min(max(p.done_bytes, 0), p.total_bytes)
            figures = f" {100 * done // p.total_bytes:3d}%  {size(done) if done else '0B'}/{size(p.total_bytes)}"
        else:
            done, figures = 0, f"  {size(p.done_bytes) if p.done_bytes else '0B'}"
        if p.bytes_per_second:
            figures += f"  {rate(p.bytes_per_second)}"
            if p.total_bytes and done < p.total_bytes:
                left = (p.total_bytes - done) / p.bytes_per_second
                figures += f"  {units.format_duration(dt.timedelta(seconds=round(left)))} left"
        return self.line(label, done, p.total_bytes, figures, columns)

    def steps(self, label: str, done: int, total: int) -> None:
        """Draws a count of steps (`vm 2^16 [###---] 12/68`) instead of bytes."""
        self._draw(lambda columns: self.line(label, done, total, f" {done}/{total}", columns))

    def show(self, p) -> None:
        """Draws p (a Progress message), or takes the bar away when p is None."""
        if not self.live:
            return
        if p is None:
            if self.drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self.drawn = False
            return
        self._draw(lambda columns: self.render(p, columns))

    def _draw(self, text) -> None:
        if not self.live:
            return
        self.stream.write("\r" + text(shutil.get_terminal_size((80, 24)).columns) + "\033[K")
        self.stream.flush()
        self.drawn = True
