"""Pure-Python twin of `_copysum`: copy a file and checksum it in one pass (VM image
propagation, later migration). Same API and same results as the Cython extension, which
reuses the shared parts defined here (digest format, DigestMismatch, CopyResult, the
partial-file handling of copy_file); only the per-chunk core differs. Slow but exact.

The digest ("blake3-4m"), precisely, so that another implementation can reproduce it:

- The file (size S bytes) is cut into chunks of C = 4 MiB = 4194304 bytes: chunk i holds
  bytes [i*C, min((i+1)*C, S)), so there are ceil(S / C) chunks and only the last may be
  short. An empty file has zero chunks.
- Chunk digest d_i = BLAKE3 (default hash mode, 32-byte output) of the chunk's bytes. Holes
  of a sparse file read as zeros, so a chunk of n zero bytes always has the digest
  zero_chunk_digest(n) = BLAKE3(n zero bytes), however it is stored.
- Whole-file digest = BLAKE3 (32-byte output) of
      b"vws-blake3-4m\\0"  (the 13 ASCII bytes "vws-blake3-4m" then one zero byte)
      + S as an unsigned 64-bit little-endian integer (8 bytes)
      + d_0 + d_1 + ... + d_{n-1}  (32 bytes each, in file order)
  written as the string "blake3-4m:" + 64 lowercase hex digits.
  E.g. the empty file: BLAKE3(b"vws-blake3-4m\\0" + bytes(8)).
  In Python: blake3(b"vws-blake3-4m\\0" + S.to_bytes(8, "little") + b"".join(d)).hexdigest().

Like Dropbox's content hash, but with BLAKE3 and the size and a domain header in the
outer hash. The chunk digests let a transfer be verified, resumed or compared per chunk.
Other chunk sizes (the chunk_size argument, for tests and tuning) use the same rule with
their own label in place of "4m" in both the header and the prefix: "<n>m" when the size is
a whole number of MiB, else "<n>k" for whole KiB, else "<n>b"; only "blake3-4m" is the
standard form, and parse_digest accepts only the label of the chunk size it is given.

Copying (copy_file): one pass over the source, each chunk read once, hashed and written.
Sparse files stay sparse: the source's data ranges come from lseek(SEEK_DATA/SEEK_HOLE);
only data ranges are read (holes are zeros), a chunk entirely in a hole is not read at all,
only the data ranges of a chunk are written, and a chunk whose bytes are all zero is not
written at all (it stays a hole in the copy); the copy is then truncated to the source's
size. data_bytes counts the bytes read (the data ranges), written_bytes the bytes written.
The copy goes to `dst + ".partial"` and is renamed over dst only when complete and, when
`expected` is given, when its digest matches; on any error (a mismatch raises
DigestMismatch) the partial file is removed and dst is left as it was.

progress(done_bytes, total_bytes), when given, is called each time the bytes processed
(holes included) pass another multiple of PROGRESS_STEP (64 MiB), and once at the end
with (total, total)."""
from __future__ import annotations

import dataclasses
import errno
import functools
import operator
import os
import re
import stat
import time
from collections.abc import Callable

from blake3 import blake3

__all__ = ["CHUNK", "CopyResult", "DigestMismatch", "PROGRESS_STEP", "chunk_count", "combine", "copy_file",
           "digest_file", "parse_digest", "read_chunks", "zero_chunk_digest"]

CHUNK = 4 << 20
PROGRESS_STEP = 64 << 20
DIGEST_SIZE = 32
PARTIAL_SUFFIX = ".partial"

Progress = Callable[[int, int], None]
# consume(chunk index, its digest, its bytes or None when all zero); see read_chunks
Consume = Callable[[int, bytes, "memoryview | None"], None]
# core(src_fd, dst_fd or -1, size, chunk_size, progress) -> (chunk digests, data_bytes, written_bytes)
Core = Callable[[int, int, int, int, "Progress | None"], "tuple[list[bytes], int, int]"]


class DigestMismatch(ValueError):
    """The copy's digest is not the one expected; nothing was left at the destination."""

    def __init__(self, expected: str, actual: str):
        super().__init__(expected, actual)
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return f"digest mismatch: expected {self.expected}, got {self.actual}"


@dataclasses.dataclass
class CopyResult:
    digest: str                 # "blake3-4m:<64 hex>"
    size: int                   # bytes in the file (holes included)
    chunk_digests: list[bytes]  # 32 bytes per chunk, in file order
    data_bytes: int             # bytes read as data (the source's data ranges)
    written_bytes: int          # bytes written (0 for digest_file)
    seconds: float              # wall-clock time of the whole call


def check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def algorithm(chunk_size: int = CHUNK) -> str:
    """"blake3-4m" for the standard 4 MiB chunks; see the module docstring for others."""
    check_chunk_size(chunk_size)
    if chunk_size % (1 << 20) == 0:
        label = f"{chunk_size >> 20}m"
    elif chunk_size % (1 << 10) == 0:
        label = f"{chunk_size >> 10}k"
    else:
        label = f"{chunk_size}b"
    return "blake3-" + label


def chunk_count(size: int, chunk_size: int = CHUNK) -> int:
    return -(-size // chunk_size)


def combine(size: int, chunk_digests: list[bytes], *, chunk_size: int = CHUNK) -> str:
    """The whole-file digest string from the file size and its chunk digests."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0 or size >= 1 << 64:
        raise ValueError(f"size must be an int in [0, 2**64), got {size!r}")
    name = algorithm(chunk_size)
    want = chunk_count(size, chunk_size)
    if len(chunk_digests) != want:
        raise ValueError(f"a file of {size} bytes has {want} chunks of {chunk_size} bytes, "
                         f"got {len(chunk_digests)} chunk digests")
    h = blake3(b"vws-" + name.encode("ascii") + b"\0" + size.to_bytes(8, "little"))
    for i, d in enumerate(chunk_digests):
        if len(d) != DIGEST_SIZE:
            raise ValueError(f"chunk digest {i} has {len(d)} bytes, expected {DIGEST_SIZE}")
        h.update(d)
    return f"{name}:{h.hexdigest()}"


@functools.lru_cache(maxsize=4)
def zeros(length: int) -> bytes:
    return bytes(length)


@functools.lru_cache(maxsize=64)
def zero_chunk_digest(length: int) -> bytes:
    """BLAKE3 of `length` zero bytes: the digest of a chunk lying in a hole."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    return blake3(zeros(length) if length <= CHUNK else bytes(length)).digest()


_HEX = re.compile(r"[0-9a-fA-F]{64}")


def parse_digest(text: str, *, chunk_size: int = CHUNK) -> tuple[str, bytes]:
    """"blake3-4m:<64 hex digits>" -> ("blake3-4m", the 32 raw bytes). Hex digits may be
    upper or lower case. ValueError saying what is wrong for anything else."""
    name = algorithm(chunk_size)
    if not isinstance(text, str):
        raise ValueError(f"a digest must be a str like '{name}:<64 hex digits>', got {type(text).__name__}")
    head, sep, hexpart = text.partition(":")
    if not sep:
        raise ValueError(f"digest {text!r} has no ':'; expected '{name}:<64 hex digits>'")
    if head != name:
        raise ValueError(f"digest {text!r} has algorithm {head!r}; expected {name!r} ('{name}:<64 hex digits>')")
    if not _HEX.fullmatch(hexpart):
        raise ValueError(f"digest {text!r}: after '{name}:' expected 64 hex digits, got {len(hexpart)} "
                         f"characters{'' if len(hexpart) != 64 else ' that are not all hex digits'}")
    return name, bytes.fromhex(hexpart)


def source_size(fd: int, path) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    raise ValueError(f"{os.fspath(path)!r} is not a regular file or block device")


def open_source(path) -> tuple[int, int]:
    """(fd, size) of a file about to be read once from start to end; the caller closes fd."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = source_size(fd, path)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:  # pragma: no cover - advice only
        pass
    return fd, size


def shrank() -> OSError:
    return OSError(errno.EIO, "the source file shrank while it was being read")


class Extents:
    """The source's data ranges, asked of the kernel with SEEK_DATA/SEEK_HOLE and cached one
    extent at a time ([ds, de)); the Cython core follows the same steps."""

    NONE = 1 << 63  # no data from here on

    def __init__(self, fd: int):
        self.fd = fd
        self.ds = self.de = -1

    def segments(self, off: int, end: int) -> list[tuple[int, int]]:
        out = []
        pos = off
        while pos < end:
            if pos >= self.de:
                try:
                    self.ds = os.lseek(self.fd, pos, os.SEEK_DATA)
                    self.de = os.lseek(self.fd, self.ds, os.SEEK_HOLE)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole after pos
                        self.ds = self.de = self.NONE
                    elif e.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
                        self.ds, self.de = 0, self.NONE
                    else:
                        raise
                if self.de <= pos:  # the file changed under us: take the rest as data
                    self.ds, self.de = pos, self.NONE
            if self.ds >= end:
                break
            a, b = max(pos, self.ds), min(end, self.de)
            out.append((a, b))
            pos = b
        return out


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise shrank()
        view, offset = view[n:], offset + n


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _read_chunk(sfd: int, extents: Extents, k: int, size: int, chunk_size: int):
    """Chunk k: (its length, its data ranges, its bytes or None when they are all zero,
    the bytes read). Only the data ranges are read; holes are zeros."""
    off = k * chunk_size
    n = min(chunk_size, size - off)
    segs = extents.segments(off, off + n)
    if not segs:
        return n, segs, None, 0
    buf = bytearray(n)  # zeros where the source has holes
    view = memoryview(buf)
    nread = 0
    for a, b in segs:
        _pread_into(sfd, view[a - off:b - off], a)
        nread += b - a
    return n, segs, (None if buf == zeros(n) else view), nread


def _core(sfd: int, dfd: int, size: int, chunk_size: int, progress: Progress | None):
    """One chunk at a time, in one thread: read its data ranges, test for zeros, hash, write."""
    digests: list[bytes] = []
    data_bytes = written = 0
    extents = Extents(sfd)
    step = PROGRESS_STEP
    for k in range(chunk_count(size, chunk_size)):
        off = k * chunk_size
        n, segs, view, nread = _read_chunk(sfd, extents, k, size, chunk_size)
        data_bytes += nread
        if view is None:
            digests.append(zero_chunk_digest(n))
        else:
            digests.append(blake3(view).digest())
            if dfd >= 0:
                for a, b in segs:
                    _pwrite_all(dfd, view[a - off:b - off], a)
                    written += b - a
        done = off + n
        if progress is not None and done < size and done // step > off // step:
            progress(done, size)
    if progress is not None:
        progress(size, size)
    return digests, data_bytes, written


def _scan(sfd: int, size: int, chunk_size: int, positions: list[int], consume: Consume) -> int:
    """read_chunks' core: each chunk in `positions` read, tested for zeros, hashed, consumed."""
    data_bytes = 0
    extents = Extents(sfd)
    for k in positions:
        n, _, view, nread = _read_chunk(sfd, extents, k, size, chunk_size)
        data_bytes += nread
        consume(k, zero_chunk_digest(n) if view is None else blake3(view).digest(),
                None if view is None else view.toreadonly())
    return data_bytes


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_copy(core: Core, src, dst, *, expected: str | None, progress: Progress | None,
             fsync: bool, chunk_size: int) -> CopyResult:
    """copy_file around a core: open, copy to dst.partial, truncate, optionally fsync, check
    the digest, rename into place; on any error remove dst.partial."""
    t0 = time.perf_counter()
    check_chunk_size(chunk_size)
    want = parse_digest(expected, chunk_size=chunk_size)[1] if expected is not None else None
    dst = os.fspath(dst)
    partial = dst + (PARTIAL_SUFFIX.encode() if isinstance(dst, bytes) else PARTIAL_SUFFIX)
    sfd, size = open_source(src)
    try:
        dfd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            try:
                digests, data_bytes, written = core(sfd, dfd, size, chunk_size, progress)
                os.ftruncate(dfd, size)
                if fsync:
                    os.fsync(dfd)
            finally:
                os.close(dfd)
            digest = combine(size, digests, chunk_size=chunk_size)
            if want is not None and bytes.fromhex(digest.partition(":")[2]) != want:
                raise DigestMismatch(expected, digest)
            os.replace(partial, dst)
        except BaseException:
            try:
                os.unlink(partial)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(sfd)
    if fsync:
        try:
            _fsync_dir(dst)
        except BaseException:
            try:
                os.unlink(dst)
            except FileNotFoundError:  # pragma: no cover
                pass
            raise
    return CopyResult(digest, size, digests, data_bytes, written, time.perf_counter() - t0)


def run_digest(core: Core, path, *, progress: Progress | None, chunk_size: int) -> CopyResult:
    t0 = time.perf_counter()
    check_chunk_size(chunk_size)
    fd, size = open_source(path)
    try:
        digests, data_bytes, _ = core(fd, -1, size, chunk_size, progress)
    finally:
        os.close(fd)
    digest = combine(size, digests, chunk_size=chunk_size)
    return CopyResult(digest, size, digests, data_bytes, 0, time.perf_counter() - t0)


def copy_file(src, dst, *, expected: str | None = None, progress: Progress | None = None,
              fsync: bool = False, chunk_size: int = CHUNK) -> CopyResult:
    """Copies src to dst and returns its digest (see the module docstring). With `expected`,
    dst appears only if the copy's digest equals it (DigestMismatch otherwise). With
    fsync=True the data and the rename are made durable before returning."""
    return run_copy(_core, src, dst, expected=expected, progress=progress, fsync=fsync,
                    chunk_size=chunk_size)


def digest_file(path, *, progress: Progress | None = None, chunk_size: int = CHUNK) -> CopyResult:
    """The digest of a file, as copy_file would compute it, writing nothing."""
    return run_digest(_core, path, progress=progress, chunk_size=chunk_size)


def chunk_positions(size: int, chunk_size: int, indices) -> list[int]:
    """The chunks read_chunks reads, in order: all when indices is None, else those given
    (increasing, each within the file)."""
    n = chunk_count(size, chunk_size)
    if indices is None:
        return list(range(n))
    out = [operator.index(k) for k in indices]
    for i, k in enumerate(out):
        if not 0 <= k < n:
            raise ValueError(f"chunk index {k} is not within the file's {n} chunks")
        if i and k <= out[i - 1]:
            raise ValueError(f"chunk indices must increase: {out[i - 1]} then {k}")
    return out


def run_read(scan, path, consume: Consume, *, indices, chunk_size: int) -> tuple[int, int]:
    """read_chunks around a scan core: open, check the indices, scan, close."""
    check_chunk_size(chunk_size)
    fd, size = open_source(path)
    try:
        positions = chunk_positions(size, chunk_size, indices)
        return size, scan(fd, size, chunk_size, positions, consume)
    finally:
        os.close(fd)


def read_chunks(path, consume: Consume, *, indices=None, chunk_size: int = CHUNK) -> tuple[int, int]:
    """Reads chunks of a file in one pass, hashing each as it is read (for sending it):
    consume(index, digest, data) is called for each chunk in `indices` (increasing; None for
    all), in order, where data is a read-only memoryview of the chunk's bytes (zeros at
    holes) valid only during the call (copy what you keep), or None when the chunk is all
    zeros (nothing to send). An exception from consume stops the read and is raised.
    Returns (the file's size, the bytes read as data)."""
    return run_read(_scan, path, consume, indices=indices, chunk_size=chunk_size)
