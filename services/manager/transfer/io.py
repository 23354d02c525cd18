"""File I/O for transfers: a file's chunks, whole reads and writes at an offset, holes, a
JSON file replaced in one step, and the heap kept for chunk-sized buffers."""
from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    """The length of chunk index of a file of size bytes (the last one may be shorter)."""
    return min(chunk_size, size - index * chunk_size)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Makes [offset, offset + length) a hole (zeros), whatever was written there before."""
    if _libc.fallocate(fd, _PUNCH_HOLE, offset, length) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(e, os.strerror(e))
        os.pwrite(fd, bytes(length), offset)  # no hole punching here: zeros written out


@functools.cache
def keep_chunk_buffers() -> None:
    """Chunk-sized buffers (messages, copies) come and go by the hundred a second: glibc
    would map each afresh (a page fault per 4 KiB, a third of the receiver's CPU here), so
    they are taken from the heap instead, and freed memory kept for the next ones."""
    try:
        _libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        _libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
    except AttributeError:  # not glibc
        pass


def pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:  # short reads are rare but allowed
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def pwrite(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def replace_file(path: Path, data: bytes) -> None:
    """Writes path anew in one step (a file beside it renamed over it): readers see all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, value) -> None:
    replace_file(path, json.dumps(value, indent=1, sort_keys=True).encode())
