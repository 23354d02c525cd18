"""Small reads and writes of the local host that every service shares: a directory's fsync and
a process's /proc/<pid>/stat fields."""
from __future__ import annotations

import os


def fsync_dir(path: os.PathLike | str) -> None:
    """Makes a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command (field 3, the state, first), or None
    when there is no such process. The command is parenthesised and may itself hold ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rfind(b")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether pid is a process that still runs (a zombie has finished)."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] not in (b"Z", b"X")


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot): a pid with another start time is
    another process."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None
