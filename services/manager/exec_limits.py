"""What an Exec may hand the kernel, checked before anything is spawned: a NUL byte, or more
than execve takes, answers INVALID_ARGUMENT naming the field and the limit, not ValueError or E2BIG."""
from __future__ import annotations

import os
from typing import Mapping

from ..common import errors

# The kernel refuses any one argument or variable of 128 KiB or more (MAX_ARG_STRLEN); the exec
# path prefixes each variable with its own name (VWSENV_<i>=), hence the margin.
MAX_STRING_BYTES = 120 * 1024
# argv and environment together; well under this host's ARG_MAX (2 MiB on most), which must also
# hold the exec path's own script, the account's variables and the workspace's setup.
MAX_TOTAL_BYTES = min(1024 * 1024, os.sysconf("SC_ARG_MAX") // 2)
MAX_PATH_BYTES = 4095  # PATH_MAX, less its NUL
# Beyond its bytes, each string costs the kernel its NUL and a pointer.
STRING_OVERHEAD = 1 + 8
MAX_VIOLATIONS = 10  # the message stays short however much was wrong
_SHOWN = 40


def shown(text: str) -> str:
    """What an error quotes of a string the caller sent: a short prefix."""
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def cost(text: str) -> int:
    """What one argument or variable (NAME=value) takes of ARG_MAX."""
    return len(text.encode("utf-8", "surrogatepass")) + STRING_OVERHEAD


def _string(field: str, text: str) -> list[tuple[str, str]]:
    if "\0" in text:
        return [(field, "contains a NUL byte, which no program can receive; remove it")]
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_STRING_BYTES:
        return [(field, f"is {size} bytes; each argument and variable (NAME=value) is at most {MAX_STRING_BYTES} "
                        "bytes (the kernel's limit is 128 KiB); pass large data on standard input or in a file")]
    return []


def check(argv: list[str], environment: Mapping[str, str], working_directory: str,
          inherited: Mapping[str, str] | None = None) -> None:
    """Raises InvalidArgument with every violation (up to MAX_VIOLATIONS). inherited: the
    workspace's own environment, which the program receives too (the request's wins)."""
    v: list[tuple[str, str]] = []
    if not argv or not argv[0]:
        v.append(("argv", "is empty; give the program to run, e.g. ['/bin/echo', 'hello']"))
    for i, arg in enumerate(argv):
        v += _string(f"argv[{i}]", arg)
    for key, value in environment.items():
        field = f"environment[{shown(key)}]"
        if not key or "=" in key or "\0" in key:
            v.append((field, f"{shown(key)!r} is not a variable name; give NAME=value with no '=' or NUL in NAME"))
        else:
            v += _string(field, f"{key}={value}")
    if "\0" in working_directory:
        v.append(("working_directory", "contains a NUL byte; give a directory of the workspace"))
    elif len(working_directory.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        v.append(("working_directory", f"is longer than {MAX_PATH_BYTES} bytes (PATH_MAX)"))
    args_cost = sum(cost(a) for a in argv)
    env_cost = sum(cost(f"{k}={val}") for k, val in {**(inherited or {}), **environment}.items())
    if args_cost + env_cost > MAX_TOTAL_BYTES:
        v.append((_larger(argv, environment),
                  f"argv ({args_cost} bytes) and environment ({env_cost} bytes, the workspace's own included) come to "
                  f"{args_cost + env_cost} bytes; at most {MAX_TOTAL_BYTES} in all (each string counts its UTF-8 "
                  f"bytes plus {STRING_OVERHEAD}); pass large data on standard input or in a file"))
    if v:
        raise errors.InvalidArgument(v[:MAX_VIOLATIONS])


def check_encoded(argv: list[str], environment: Mapping[str, str], encoded_bytes: int, limit: int,
                  carrier: str) -> None:
    """InvalidArgument when a backend's carrier (e.g. the guest agent) takes fewer bytes than the
    request encodes to (encoded_bytes, escapes included) although each string passed check."""
    if encoded_bytes > limit:
        raise errors.InvalidArgument(
            f"argv and environment encode to {encoded_bytes} bytes for {carrier}, which takes at most {limit} "
            "(control characters count 6 bytes each); pass large data on standard input or in a file",
            _larger(argv, environment))


def _larger(argv: list[str], environment: Mapping[str, str]) -> str:
    """The field to name when argv and environment are too much together: the larger."""
    own = sum(cost(f"{k}={val}") for k, val in environment.items())
    return "argv" if sum(cost(a) for a in argv) >= own else "environment"
