"""Human units for sizes, durations and CPU, as the CLI and config files write them."""
from __future__ import annotations

import datetime as dt
import re

from .errors import InvalidArgument

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.I)
_POW = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.I)
_DUR_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str | int, field: str) -> int:
    """'512M', '2G', '1.5GiB', '4096' -> bytes (K/M/G are powers of 1024, as memory sizes are)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise InvalidArgument(f"{text!r} is not a size; write it like 512M, 2G or 1073741824", field)
    return int(float(m.group(1)) * (1024 ** _POW[m.group(2).lower()]))


def parse_duration(text: str | int | float, field: str) -> dt.timedelta:
    """'90s', '10m', '2h', '1d', '2w', '1h30m', or a number of seconds."""
    if isinstance(text, (int, float)):
        return dt.timedelta(seconds=text)
    s = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return dt.timedelta(seconds=float(s))
    parts = _DURATION.findall(s)
    if not parts or "".join(a + b for a, b in parts) != s.replace(" ", ""):
        raise InvalidArgument(f"{text!r} is not a duration; write it like 90s, 30m, 2h, 1d or 1h30m", field)
    return dt.timedelta(seconds=sum(float(n) * _DUR_SECONDS[u.lower()] for n, u in parts))


def parse_cpu(text: str | int, field: str) -> int:
    """'500m' -> 500 millicores; '2' or '1.5' cores -> 2000, 1500."""
    if isinstance(text, int):
        return text
    s = str(text).strip()
    try:
        if s.endswith("m"):
            return int(s[:-1])
        return int(round(float(s) * 1000))
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a CPU amount; write 500m (millicores) or 2 (cores)", field) from None


def parse_bandwidth(text: str | int, field: str) -> int:
    """'100M', '1G' (bits/s, powers of 1000 as networks count), '1000000' -> bits/s."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:bit|bps|b)?(?:/s)?\s*", str(text), re.I)
    if not m:
        raise InvalidArgument(f"{text!r} is not a bandwidth; write it like 100M or 1G (bits per second)", field)
    return int(float(m.group(1)) * 1000 ** _POW[m.group(2).lower()])


def format_size(n: int) -> str:
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n >= 1024 ** power and n % (1024 ** power) == 0:
            return f"{n // 1024 ** power}{unit}"
        if n >= 1024 ** power:
            return f"{n / 1024 ** power:.1f}{unit}"
    return f"{n}B" if n else "-"


def format_duration(d: dt.timedelta) -> str:
    s = int(d.total_seconds())
    if s <= 0:
        return "0s"
    out = []
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= secs:
            out.append(f"{s // secs}{unit}")
            s %= secs
    return "".join(out[:2])
