"""Manager-to-manager file transfer (the ground migration stands on): verified per chunk,
resumable, sending only what the receiver lacks.

The sender (send_file) reads its file once through the native core (copysum.read_chunks:
each chunk hashed with BLAKE3 in the same pass as the read). Before that it asks the
receiver (StartTransfer) what it holds: the chunks of this transfer it has verified already
(a resumed transfer), and the digests of chunks it can copy from files of its own (the base
image in its image cache, an earlier copy of the same workspace, an earlier transfer). Then,
in SendChunks streams (several at once, each on its own connection), each chunk goes as
CHUNK_SOURCE_ZERO (all zeros: stays a hole), LOCAL (the receiver copies it, verified, from
its own file), BASE (the receiver's earlier copy of the file at the same place, with only
the 64 KiB blocks that differ from it sent: the receiver gave their digests) or DATA (its
data ranges only, so holes inside a chunk stay holes too). A broken stream (link down,
UNAVAILABLE, a deadline, no progress for stall_timeout) is started again with backoff from
what the receiver has verified, until give_up_after.

The receiver (TransferStore, under the manager's state directory) verifies every chunk
before writing it, appends its index and digest to the transfer's journal, and completes
the transfer (CommitTransfer) only when every chunk is verified and they combine into the
file's digest. After a receiver restart the journal's chunks are read back and checked
before they count. take() hands the completed file over; discard() removes it.

Layout of the store (root = STATE_DIR/transfer):
    partial/<key>.data, .journal, .json   a transfer in progress (key: BLAKE3 of its id)
    done/<key>                            completed, not yet taken
    chunks/<digest hex>-<chunk size>      chunk digests of a known file (32 bytes each)
    chunks/<digest hex>-<block>.blocks    its block digests (16 bytes each), for BASE chunks
    files.json                            completed transfers: id -> path, size, digest, taken
"""
from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import dataclasses
import errno
import functools
import itertools
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import grpc
from blake3 import blake3

from ..common import clients, errors, host
from vws.native import copysum
from vws.native.copysum_py import Extents
from ..v1 import transfer_pb2, transfer_pb2_grpc

log = logging.getLogger("vws.manager.transfer")

CHUNK = copysum.CHUNK
MAX_CHUNK = 16 << 20
# Room in a message beyond the chunk's bytes (index, digest, ids, range headers).
MESSAGE_OVERHEAD = 64 << 10
TRANSFER_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,200}")
DIGEST_BYTES = 32
SEND_CHUNKS = "/vws.v1.TransferService/SendChunks"
RECORD = 8 + DIGEST_BYTES  # a journal record: index (u64 little-endian) + digest
ZERO, DATA, LOCAL, BASE = (transfer_pb2.CHUNK_SOURCE_ZERO, transfer_pb2.CHUNK_SOURCE_DATA,
                           transfer_pb2.CHUNK_SOURCE_LOCAL, transfer_pb2.CHUNK_SOURCE_BASE)
# Blocks of an earlier copy, for chunks that differ from it in a few places: 64 KiB (a qcow2
# cluster) or larger for large files, so that their digests (16 bytes each) fit in 2 MiB.
BLOCK_DIGEST = 16
MIN_BLOCK = 64 << 10
MAX_BLOCK_DIGESTS = 2 << 20
# A stream that ends with one of these is started again (from what the receiver verified).
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.CANCELLED, grpc.StatusCode.DATA_LOSS)
# A chunk refused as corrupt this many times in a row is not a passing fault: give up.
MAX_DATA_LOSS = 3


def check_transfer_id(transfer_id: str, field: str = "transfer_id") -> str:
    if not isinstance(transfer_id, str) or not TRANSFER_ID.fullmatch(transfer_id):
        raise errors.InvalidArgument(f"{transfer_id!r} is not a transfer id: use 1 to 200 letters, digits and "
                                     "'._:@/-'", field)
    return transfer_id


def max_message_bytes(chunk_size: int) -> int:
    return chunk_size + MESSAGE_OVERHEAD


# HTTP/2 and TCP tuned for a stream of large messages, on both ends: whole chunks per frame
# and per read, a write buffer that holds a few (about 1.5x the throughput of the defaults here).
BULK_OPTIONS = [("grpc.http2.max_frame_size", (1 << 24) - 1), ("grpc.http2.write_buffer_size", 16 << 20),
                ("grpc.experimental.tcp_read_chunk_size", 4 << 20),
                ("grpc.experimental.tcp_min_read_chunk_size", 1 << 20),
                ("grpc.experimental.tcp_max_read_chunk_size", 16 << 20)]


def channel_options(chunk_size: int) -> list[tuple[str, int]]:
    """Messages sized for a chunk; no compression (chunks are checked, often incompressible)."""
    limit = max_message_bytes(chunk_size)
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.default_compression_algorithm", 0), ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000), *BULK_OPTIONS]


def _chunk_length(size: int, chunk_size: int, index: int) -> int:
    return min(chunk_size, size - index * chunk_size)


def _key(transfer_id: str) -> str:
    return blake3(transfer_id.encode()).hexdigest()[:32]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Makes [offset, offset + length) a hole (zeros), whatever was written there before."""
    if _libc.fallocate(fd, _PUNCH_HOLE, offset, length) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(e, os.strerror(e))
        os.pwrite(fd, bytes(length), offset)  # no hole punching here: zeros written out


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


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


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:  # short reads are rare but allowed
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _pwrite(fd: int, data, offset: int) -> None:
    view = memoryview(data)
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


# ============================================================================ the receiver

# ============================================================================ SendChunksRequest
# Chunks are by far the bulk of the bytes: they are encoded and decoded here, by hand, to
# the message's wire format, so that a chunk's bytes are copied once on each side (the
# generated Python classes copy them three times, costing a third of the throughput).

@dataclasses.dataclass
class Chunk:
    """One SendChunksRequest, its data a view of the received message (not a copy)."""
    transfer_id: str
    session: int
    index: int
    digest: bytes
    source: int
    data: "bytes | memoryview"
    ranges: list[tuple[int, int]]  # (offset, length) of each piece of data; empty: data is the chunk


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("a truncated or overlong varint in SendChunksRequest")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf):
    """(field number, value) of each field: an int, or a memoryview for length-delimited ones."""
    view, pos = memoryview(buf), 0
    while pos < len(view):
        key, pos = _read_varint(view, pos)
        kind = key & 7
        if kind == 0:
            value, pos = _read_varint(view, pos)
        elif kind == 2:
            n, pos = _read_varint(view, pos)
            if pos + n > len(view):
                raise ValueError("a truncated field in SendChunksRequest")
            value, pos = view[pos:pos + n], pos + n
        elif kind in (1, 5):  # fixed64, fixed32: no such field here, skipped as unknown
            pos, value = pos + (8 if kind == 1 else 4), None
        else:
            raise ValueError(f"wire type {kind} in SendChunksRequest")
        yield key >> 3, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_chunk(buf) -> Chunk:
    """SendChunksRequest bytes -> Chunk (same result as the generated class's parse)."""
    c = Chunk("", 0, 0, b"", 0, b"", [])
    for field, value in _fields(buf):
        if field == 1:
            c.transfer_id = bytes(value).decode()
        elif field == 2:
            c.session = _int64(value)
        elif field == 3:
            c.index = _int64(value)
        elif field == 4:
            c.digest = bytes(value)
        elif field == 5:
            c.source = _int64(value)
        elif field == 6:
            c.data = value
        elif field == 7:
            r = dict(_fields(value))
            c.ranges.append((_int64(r.get(1, 0)), _int64(r.get(2, 0))))
    return c


def encode_chunk(transfer_id: str, session: int, index: int, digest: bytes, source: int,
                 pieces: Iterable = (), ranges: Iterable[tuple[int, int]] = ()) -> bytes:
    """A SendChunksRequest's bytes, data = the pieces one after the other (copied once)."""
    head = transfer_pb2.SendChunksRequest(
        transfer_id=transfer_id, session=session, index=index, digest=digest, source=source,
        data_ranges=[transfer_pb2.DataRange(offset=a, length=n) for a, n in ranges]).SerializeToString()
    pieces = list(pieces)
    if not pieces:
        return head
    return b"".join([head, b"\x32", _varint(sum(len(p) for p in pieces)), *pieces])  # field 6, length-delimited


@dataclasses.dataclass
class Opening:
    session: int
    verified: dict[int, bytes]
    local_digests: list[bytes]
    max_message_bytes: int
    base_block_digests: bytes = b""
    base_block_size: int = 0


@dataclasses.dataclass
class Received:
    chunks_verified: int = 0
    bytes_received: int = 0
    bytes_reused: int = 0


class Incoming:
    """A transfer being received: its partial file, its journal and what is verified."""

    def __init__(self, store: "TransferStore", transfer_id: str, size: int, chunk_size: int):
        self.transfer_id, self.size, self.chunk_size = transfer_id, size, chunk_size
        self.nchunks = copysum.chunk_count(size, chunk_size)
        base = store.root / "partial" / _key(transfer_id)
        self.data_path, self.journal_path, self.meta_path = (base.with_suffix(s) for s in (".data", ".journal", ".json"))
        self.lock = threading.Lock()
        self.session = 0
        self.verified: dict[int, bytes] = {}
        self.touched: set[int] = set()  # written to since this partial file was made
        self.local: dict[bytes, tuple[str, int, int]] = {}  # digest -> (path, offset, length)
        self.base: tuple[str, int] | None = None  # an earlier copy of this file: (path, size)
        self.base_failed = False  # it did not give a chunk its digest: not offered again
        self.closed = False  # discarded (or replaced) while a stream may still be running
        meta = {"transfer_id": transfer_id, "size": size, "chunk_size": chunk_size}
        self.fresh = not self._reopen(meta)
        if self.fresh:
            for p in (self.data_path, self.journal_path):
                p.unlink(missing_ok=True)
            self.fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.ftruncate(self.fd, size)  # all a hole until chunks arrive
            _write_json(self.meta_path, meta)
        self.journal = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _reopen(self, meta: dict) -> bool:
        """Takes up a partial copy left by an earlier run of the receiver: its journal's chunks,
        each read back and checked (the journal may have outlived the data in a crash)."""
        try:
            if json.loads(self.meta_path.read_text()) != meta:
                return False
            fd = os.open(self.data_path, os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, ValueError):
            return False
        if os.fstat(fd).st_size != self.size:
            os.close(fd)
            return False
        self.fd = fd
        claimed: dict[int, bytes] = {}
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            raw = b""
        for off in range(0, len(raw) - RECORD + 1, RECORD):  # a torn last record is ignored
            k = int.from_bytes(raw[off:off + 8], "little")
            if k < self.nchunks:
                claimed[k] = raw[off + 8:off + RECORD]

        def check(k, digest, data):
            if claimed[k] == digest:
                self.verified[k] = digest
        copysum.read_chunks(self.data_path, check, indices=sorted(claimed), chunk_size=self.chunk_size)
        log.info("transfer %s: resuming with %d of %d chunks verified (%d in the journal)", self.transfer_id,
                 len(self.verified), self.nchunks, len(claimed))
        return True

    def close(self) -> None:
        self.closed = True
        for fd in (self.fd, self.journal):
            try:
                os.close(fd)
            except OSError:
                pass

    # ---- one chunk ----

    def put(self, chunk: Chunk, stats: Received) -> None:
        """Verifies a chunk, writes it, records it. Raises before writing anything of it when
        it does not match its digest."""
        k, n = chunk.index, _chunk_length(self.size, self.chunk_size, chunk.index)
        off = k * self.chunk_size
        if chunk.source == ZERO:
            if chunk.digest != copysum.zero_chunk_digest(n):
                raise errors.DataLoss(f"chunk {k} of transfer {self.transfer_id}: sent as zeros but its digest "
                                      "is not that of zeros; it was not written")
            self._clear(k, off, n)
            received, reused = 0, 0
        elif chunk.source == LOCAL:
            where = self.local.get(chunk.digest)
            if where is None or where[2] != n:
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: this receiver holds no chunk "
                                     "with its digest (any more); start the transfer again")
            path, at, length = where
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = _pread(fd, length, at)
            finally:
                os.close(fd)
            if blake3(data).digest() != chunk.digest:
                with self.lock:
                    self.local.pop(chunk.digest, None)
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: the local copy in {path} no longer "
                                     "matches its digest; start the transfer again (it will be sent)")
            self.touched.add(k)
            _pwrite(self.fd, data, off)
            received, reused = 0, n
        elif chunk.source == BASE:
            if self.base is None:
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: no earlier copy to build it on "
                                     "(any more); start the transfer again")
            fd = os.open(self.base[0], os.O_RDONLY | os.O_CLOEXEC)
            try:
                whole = bytearray(_pread(fd, n, off).ljust(n, b"\0"))
            finally:
                os.close(fd)
            for at, piece in self._pieces(chunk, n):
                whole[at:at + len(piece)] = piece
            if blake3(whole).digest() != chunk.digest:
                self.base_failed = True
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: the earlier copy it was built on has "
                                     "changed; start the transfer again (it will not be used)")
            self.touched.add(k)
            _pwrite(self.fd, whole, off)
            received, reused = len(chunk.data), n - len(chunk.data)
        else:
            pieces = self._pieces(chunk, n)
            if chunk.ranges:
                buf = bytearray(n)
                for at, piece in pieces:
                    buf[at:at + len(piece)] = piece
                whole = buf
            else:
                whole = chunk.data
            if blake3(whole).digest() != chunk.digest:
                raise errors.DataLoss(f"chunk {k} of transfer {self.transfer_id} does not match its digest; it was "
                                      "refused and not written (send it again)")
            if chunk.ranges:
                self._clear(k, off, n)
            self.touched.add(k)
            for at, piece in pieces:
                _pwrite(self.fd, piece, off + at)
            received, reused = len(chunk.data), 0
        self._record(k, chunk.digest)
        with self.lock:  # several streams and workers count into one
            stats.chunks_verified += 1
            stats.bytes_received += received
            stats.bytes_reused += reused

    @staticmethod
    def _pieces(chunk: Chunk, n: int) -> list[tuple[int, memoryview]]:
        """(offset in the chunk, bytes) of each piece of a chunk's data, checked."""
        ranges = chunk.ranges or [(0, n)]
        if sum(length for _, length in ranges) != len(chunk.data):
            raise errors.InvalidArgument(f"chunk {chunk.index}: {len(chunk.data)} bytes of data, but its ranges (or "
                                         f"its length, {n}) say {sum(length for _, length in ranges)}", "data")
        pieces, at_data, end = [], memoryview(chunk.data), 0
        for at, length in ranges:
            if at < end or length < 0 or at + length > n:
                raise errors.InvalidArgument(f"chunk {chunk.index}: data ranges must be in order, apart, and within "
                                             f"its {n} bytes", "data_ranges")
            pieces.append((at, at_data[:length]))
            at_data, end = at_data[length:], at + length
        return pieces

    def _clear(self, k: int, off: int, n: int) -> None:
        """Zeros where the chunk has none: nothing to do in a new file, a hole punched where
        something may have been written before (an earlier run, an interrupted write)."""
        if not self.fresh or k in self.touched:
            _punch_hole(self.fd, off, n)

    def _record(self, k: int, digest: bytes) -> None:
        with self.lock:
            os.write(self.journal, k.to_bytes(8, "little") + digest)
            self.verified[k] = digest
            # Later chunks with the same content are copied from here.
            self.local.setdefault(digest, (str(self.data_path), k * self.chunk_size,
                                           _chunk_length(self.size, self.chunk_size, k)))


class TransferStore:
    """The receiving side of transfers, under one directory of the manager's state."""

    def __init__(self, root: Path, image_cache: Path | None = None, fsync: bool = True, workers: int = 2):
        self.root = Path(root)
        for d in ("partial", "done", "chunks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.image_cache = Path(image_cache) if image_cache else None
        self.fsync, self.workers = fsync, workers
        keep_chunk_buffers()
        self._lock = threading.Lock()
        self._open: dict[str, Incoming] = {}
        self._files_path = self.root / "files.json"
        try:
            self._files: dict[str, dict] = json.loads(self._files_path.read_text())
        except (FileNotFoundError, ValueError):
            self._files = {}

    def close(self) -> None:
        with self._lock:
            for t in self._open.values():
                t.close()
            self._open.clear()

    # ---- the RPCs' service layer ----

    def start(self, transfer_id: str, size: int, chunk_size: int, candidate_digests: Iterable[str] = (),
              candidate_transfer_ids: Iterable[str] = ()) -> Opening:
        check_transfer_id(transfer_id)
        if size < 0:
            raise errors.InvalidArgument(f"{size} is not a file size", "size_bytes")
        if not 0 < chunk_size <= MAX_CHUNK:
            raise errors.InvalidArgument(f"{chunk_size}: the chunk size must be within 1 byte and {MAX_CHUNK >> 20} "
                                         f"MiB ({CHUNK} for blake3-4m digests)", "chunk_size_bytes")
        with self._lock:
            done = self._files.get(transfer_id)
            if done is not None and not done.get("taken"):
                if (done["size"], done["chunk_size"]) != (size, chunk_size):
                    raise errors.FailedPrecondition(f"transfer {transfer_id} is complete with another file; take or "
                                                    "abort it before sending another under the same id")
                digests = self._chunk_digests(Path(done["path"]), done["digest"], chunk_size) or []
                return Opening(0, dict(enumerate(digests)), [], max_message_bytes(chunk_size))
            t = self._open.get(transfer_id)
            if t is not None and (t.size, t.chunk_size) != (size, chunk_size):
                t.close()
                t = None
            if t is None:
                t = self._open[transfer_id] = Incoming(self, transfer_id, size, chunk_size)
            with t.lock:
                t.session += 1
                session = t.session
                verified = dict(t.verified)
        local, files = self._local_index(t, list(candidate_digests), [transfer_id, *candidate_transfer_ids])
        base, blocks, block_size = None, b"", 0
        for path, digest in files[:1] if not t.base_failed else ():  # the likeliest earlier copy
            block_size, blocks = self._block_digests(path, digest, chunk_size)
            base = (str(path), path.stat().st_size) if blocks else None
        with t.lock:
            t.local, t.base = local, base
        zero = copysum.zero_chunk_digest(chunk_size)
        return Opening(session, verified, [d for d in local if d != zero], max_message_bytes(chunk_size),
                       blocks, block_size if blocks else 0)

    def receive(self, transfer_id: str, session: int, chunks: Iterable[Chunk]) -> Received:
        """Verifies and writes a stream of chunks, several at a time (hashing and I/O release
        the GIL); the first refused chunk ends the stream with its error."""
        stats = Received()
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        t = None
        with concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="vws-transfer") as pool:
            for chunk in chunks:
                t = t or self._incoming(transfer_id)
                if session != t.session:
                    raise errors.Aborted(f"transfer {transfer_id} was started again (session {t.session}); this "
                                         f"stream (session {session}) is stale")
                if not 0 <= chunk.index < t.nchunks:
                    raise errors.InvalidArgument(f"chunk {chunk.index} is not within the file's {t.nchunks} chunks",
                                                 "index")
                if len(chunk.digest) != DIGEST_BYTES:
                    raise errors.InvalidArgument(f"a chunk digest has {DIGEST_BYTES} bytes, not {len(chunk.digest)}",
                                                 "digest")
                if chunk.source not in (ZERO, DATA, LOCAL, BASE):
                    raise errors.InvalidArgument("say where the chunk comes from (CHUNK_SOURCE_DATA, _LOCAL, _ZERO "
                                                 "or _BASE)", "source")
                pending.append(pool.submit(t.put, chunk, stats))
                while pending and (pending[0].done() or len(pending) > 2 * self.workers):
                    self._result(t, pending.popleft())
            for f in pending:
                self._result(t, f)
        return stats

    @staticmethod
    def _result(t: Incoming, f: concurrent.futures.Future) -> None:
        try:
            f.result()
        except OSError:
            if t.closed:  # its files went with a discard: not an error of the host
                raise errors.Aborted(f"transfer {t.transfer_id} was aborted while this stream ran") from None
            raise

    def commit(self, transfer_id: str, digest: str) -> tuple[int, str]:
        check_transfer_id(transfer_id)
        try:
            copysum.parse_digest(digest, chunk_size=self._chunk_size_of(transfer_id))
        except ValueError as exc:
            raise errors.InvalidArgument(str(exc), "digest") from None
        with self._lock:
            done = self._files.get(transfer_id)
            if done is not None and not done.get("taken"):
                if done["digest"] != digest:
                    raise errors.FailedPrecondition(f"transfer {transfer_id} is complete with digest {done['digest']}, "
                                                    f"not {digest}")
                return done["size"], digest
        t = self._incoming(transfer_id)
        with t.lock:
            missing = t.nchunks - len(t.verified)
            if missing:
                raise errors.FailedPrecondition(f"transfer {transfer_id}: {missing} of {t.nchunks} chunks are not "
                                                "verified yet; send them (StartTransfer says which are)")
            digests = [t.verified[k] for k in range(t.nchunks)]
            actual = copysum.combine(t.size, digests, chunk_size=t.chunk_size)
            if actual.lower() != digest.lower():
                raise errors.DataLoss(f"transfer {transfer_id}: its chunks make the digest {actual}, not {digest}; "
                                      "nothing was completed")
            if self.fsync:
                os.fsync(t.fd)
            final = self.root / "done" / _key(transfer_id)
            os.replace(t.data_path, final)
            if self.fsync:
                host.fsync_dir(final.parent)
            self._save_chunk_digests(actual, t.chunk_size, digests)
            t.close()
            t.journal_path.unlink(missing_ok=True)
            t.meta_path.unlink(missing_ok=True)
        with self._lock:
            self._open.pop(transfer_id, None)
            self._files[transfer_id] = {"path": str(final), "size": t.size, "chunk_size": t.chunk_size,
                                        "digest": actual, "mtime_ns": final.stat().st_mtime_ns, "taken": False}
            _write_json(self._files_path, self._files)
        log.info("transfer %s complete: %d bytes, %s", transfer_id, t.size, actual)
        return t.size, actual

    def take(self, transfer_id: str, dest: Path | str | None = None) -> Path:
        """The completed file, moved to dest when given. It stays known (by its id and its
        digest) as a candidate for later transfers, as long as it is not changed."""
        with self._lock:
            done = self._files.get(transfer_id)
            if done is None:
                raise errors.NotFound(f"no completed transfer {transfer_id}")
            if done.get("taken"):
                raise errors.FailedPrecondition(f"transfer {transfer_id} was taken already ({done['path']})")
            path = Path(done["path"])
            if dest is not None:
                shutil.move(str(path), str(dest))  # a rename on the same filesystem
                path = Path(dest)
            done.update(path=str(path), taken=True, mtime_ns=path.stat().st_mtime_ns)
            _write_json(self._files_path, self._files)
            return path

    def discard(self, transfer_id: str) -> bool:
        """Removes a transfer's partial or completed (not taken) copy; forgets a taken one
        (whose file belongs to whoever took it). True when there was something."""
        check_transfer_id(transfer_id)
        with self._lock:
            t = self._open.pop(transfer_id, None)
            done = self._files.pop(transfer_id, None)
            if done is not None:
                if not done.get("taken"):
                    Path(done["path"]).unlink(missing_ok=True)
                _write_json(self._files_path, self._files)
        if t is not None:
            with t.lock:
                t.session += 1  # a stream still running is stale from now on
                t.close()
        base = self.root / "partial" / _key(transfer_id)
        found = t is not None or done is not None
        for suffix in (".data", ".journal", ".json"):
            p = base.with_suffix(suffix)
            found |= p.exists()
            p.unlink(missing_ok=True)
        return found

    # ---- helpers ----

    def _incoming(self, transfer_id: str) -> Incoming:
        with self._lock:
            t = self._open.get(transfer_id)
        if t is None:
            raise errors.FailedPrecondition(f"transfer {transfer_id} is not open here; StartTransfer first")
        return t

    def _chunk_size_of(self, transfer_id: str) -> int:
        with self._lock:
            t = self._open.get(transfer_id)
            done = self._files.get(transfer_id)
        return t.chunk_size if t else done["chunk_size"] if done else CHUNK

    def _local_index(self, t: Incoming, digests: list[str], transfer_ids: list[str]) -> tuple[dict, list]:
        """(digest -> (path, offset, length) of chunks this receiver can copy: the transfer's own
        verified chunks, then the candidate files'; the candidate files, (path, digest), earlier
        transfers first, then by digest (the image cache, transfers))."""
        cs = t.chunk_size
        with t.lock:
            index = {d: (str(t.data_path), k * cs, _chunk_length(t.size, cs, k)) for k, d in t.verified.items()}
        files: list[tuple[Path, str]] = []
        with self._lock:
            known = dict(self._files)
        for tid in transfer_ids:
            f = known.get(tid)
            if f is not None and f["chunk_size"] == cs:
                try:
                    unchanged = Path(f["path"]).stat().st_mtime_ns == f["mtime_ns"]
                except FileNotFoundError:
                    continue
                if unchanged:
                    files.append((Path(f["path"]), f["digest"]))
        for d in digests:
            try:
                hexpart = copysum.parse_digest(d, chunk_size=cs)[1].hex()
            except ValueError:
                continue  # another chunk size or not a digest: nothing to share
            if self.image_cache is not None and (self.image_cache / hexpart).is_file():
                files.append((self.image_cache / hexpart, d))
            files += [(Path(f["path"]), f["digest"]) for f in known.values() if f["digest"] == d]
        usable = []
        for path, digest in files:
            chunk_digests = self._chunk_digests(path, digest, cs)
            if chunk_digests is None:
                continue
            usable.append((path, digest))
            size = path.stat().st_size
            for k, d in enumerate(chunk_digests):
                index.setdefault(d, (str(path), k * cs, _chunk_length(size, cs, k)))
        return index, usable

    def _block_digests(self, path: Path, digest: str, chunk_size: int) -> tuple[int, bytes]:
        """(block size, digests of a known file's blocks): the smallest power of two from
        MIN_BLOCK that divides the chunk size and keeps them within MAX_BLOCK_DIGESTS; b""
        when none does. Computed by the native core once, then remembered."""
        size, block = path.stat().st_size, MIN_BLOCK
        while copysum.chunk_count(size, block) * BLOCK_DIGEST > MAX_BLOCK_DIGESTS and block < chunk_size:
            block *= 2
        if chunk_size % block or copysum.chunk_count(size, block) * BLOCK_DIGEST > MAX_BLOCK_DIGESTS:
            return block, b""
        saved = self.root / "chunks" / f"{digest.partition(':')[2].lower()}-{block}.blocks"
        try:
            return block, saved.read_bytes()
        except FileNotFoundError:
            pass
        try:
            blocks = b"".join(d[:BLOCK_DIGEST] for d in copysum.digest_file(path, chunk_size=block).chunk_digests)
        except OSError:
            return block, b""
        tmp = saved.with_name(saved.name + ".tmp")
        tmp.write_bytes(blocks)
        os.replace(tmp, saved)
        return block, blocks

    def _chunk_digests(self, path: Path, digest: str, chunk_size: int) -> list[bytes] | None:
        """A known file's chunk digests: remembered, or computed (and remembered) when the file
        turns out to have the digest it is known by; None when it does not."""
        hexpart = digest.partition(":")[2].lower()
        saved = self.root / "chunks" / f"{hexpart}-{chunk_size}"
        try:
            raw = saved.read_bytes()
            return [raw[i:i + DIGEST_BYTES] for i in range(0, len(raw), DIGEST_BYTES)]
        except FileNotFoundError:
            pass
        try:
            r = copysum.digest_file(path, chunk_size=chunk_size)
        except OSError:
            return None
        if r.digest != digest:
            log.warning("%s is not %s (it is %s): not used for transfers", path, digest, r.digest)
            return None
        self._save_chunk_digests(digest, chunk_size, r.chunk_digests)
        return r.chunk_digests

    def _save_chunk_digests(self, digest: str, chunk_size: int, digests: list[bytes]) -> None:
        saved = self.root / "chunks" / f"{digest.partition(':')[2].lower()}-{chunk_size}"
        tmp = saved.with_name(saved.name + ".tmp")
        tmp.write_bytes(b"".join(digests))
        os.replace(tmp, saved)


# ============================================================================ the sender

@dataclasses.dataclass
class SendOptions:
    chunks_in_flight: int = 16      # chunks queued for the streams ahead of the network
    streams: int = 2                # SendChunks streams at once, each on its own connection
    give_up_after: float = 600.0    # seconds from the start: then TransferFailed
    stall_timeout: float = 30.0     # a stream that takes nothing for this long is broken
    call_timeout: float = 30.0      # StartTransfer, CommitTransfer
    backoff: float = 0.2            # first wait before starting again, doubled up to backoff_max
    backoff_max: float = 5.0
    chunk_size: int = CHUNK


@dataclasses.dataclass
class Progress:
    bytes_done: int     # of the file, settled: sent, copied by the receiver, zeros, or verified already
    bytes_total: int
    rate: float         # bytes_done per second since the start
    bytes_sent: int     # of chunk data over the network so far
    resumes: int


@dataclasses.dataclass
class TransferResult:
    bytes_total: int    # the file's size
    bytes_sent: int     # chunk data sent over the network (resent chunks counted again)
    bytes_reused: int   # copied by the receiver from files it holds
    bytes_zero: int     # all-zero chunks: nothing sent, holes at the receiver
    bytes_resumed: int  # verified at the receiver already when an attempt started (after the first)
    chunks_sent: int
    digest: str
    seconds: float
    resumes: int        # attempts after the first

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class TransferFailed(errors.Unavailable):
    """The transfer could not be completed within the time allowed; the receiver keeps what
    it verified, so sending again resumes from there (or abort it)."""


class _Broken(Exception):
    """This stream is over (stalled, cancelled, ended by the receiver); start again."""


def _split(candidates_hint: Iterable[str], chunk_size: int) -> tuple[list[str], list[str]]:
    """Digests (`blake3-4m:...`) apart from transfer ids."""
    digests, ids = [], []
    for c in candidates_hint:
        try:
            copysum.parse_digest(c, chunk_size=chunk_size)
            digests.append(c)
        except ValueError:
            ids.append(check_transfer_id(c, "candidates_hint"))
    return digests, ids


class _Sender:
    """One send_file: what it has learnt of the file so far outlives each attempt."""

    def __init__(self, target: str, path, transfer_id: str, candidates_hint, progress, options: SendOptions):
        self.target, self.path, self.transfer_id, self.options = target, os.fspath(path), transfer_id, options
        self.cs = options.chunk_size
        self.candidate_digests, self.candidate_ids = _split(candidates_hint, self.cs)
        self.progress = progress
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self.nchunks = copysum.chunk_count(self.size, self.cs)
        self.digests: list[bytes | None] = [None] * self.nchunks  # learnt in the read, kept across attempts
        self.result = TransferResult(self.size, 0, 0, 0, 0, 0, "", 0.0, 0)
        self.t0 = time.monotonic()
        self.done = 0
        self._last_report = 0.0

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self._last_report >= 0.2):
            self._last_report = now
            self.progress(Progress(self.done, self.size, self.done / max(now - self.t0, 1e-9),
                                   self.result.bytes_sent, self.result.resumes))

    def run(self) -> TransferResult:
        o = self.options
        wait, losses = o.backoff, 0
        while True:
            # A connection of its own per stream (a local subchannel pool: not shared with
            # each other or with other channels to the receiver), new at every attempt, so
            # that nothing of a broken connection is reused.
            channels = [clients.new_channel(self.target, options=channel_options(self.cs) + [
                ("grpc.use_local_subchannel_pool", 1)]) for _ in range(max(1, o.streams))]
            try:
                self.attempt(channels)
                self.result.seconds = time.monotonic() - self.t0
                self.report(force=True)
                return self.result
            except (grpc.RpcError, _Broken) as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                message = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
                losses = losses + 1 if code is grpc.StatusCode.DATA_LOSS else 0
                if code not in RETRYABLE or losses >= MAX_DATA_LOSS:
                    raise errors.for_status(code, f"transfer {self.transfer_id} to {self.target}: {message}") from None
                elapsed = time.monotonic() - self.t0
                if elapsed + wait > o.give_up_after:
                    raise TransferFailed(
                        f"transfer {self.transfer_id} to {self.target}: gave up after {elapsed:.0f}s and "
                        f"{self.result.resumes + 1} attempts (give_up_after {o.give_up_after:g}s); last: "
                        f"{code.name}: {message}. What was verified stays at the receiver: sending again "
                        "resumes from there") from None
                log.warning("transfer %s to %s: %s: %s; starting again in %.1fs", self.transfer_id, self.target,
                            code.name, message, wait)
                time.sleep(wait)
                wait = min(wait * 2, o.backoff_max)
                self.result.resumes += 1
            finally:
                for channel in channels:
                    channel.close()

    def attempt(self, channels: list) -> None:
        o = self.options
        stub = transfer_pb2_grpc.TransferServiceStub(channels[0])
        opening = stub.StartTransfer(transfer_pb2.StartTransferRequest(
            transfer_id=self.transfer_id, size_bytes=self.size, chunk_size_bytes=self.cs,
            candidate_digests=self.candidate_digests, candidate_transfer_ids=self.candidate_ids),
            timeout=o.call_timeout)
        verified = {c.index: c.digest for c in opening.verified_chunks}
        local = set(opening.local_digests)
        todo = [k for k in range(self.nchunks) if self.digests[k] is None or verified.get(k) != self.digests[k]]
        self.done = self.size - sum(_chunk_length(self.size, self.cs, k) for k in todo)
        if self.result.resumes:
            self.result.bytes_resumed += self.done
        if todo:
            self.stream(channels, opening.session, todo, verified, local,
                        _Base(opening.base_block_digests, opening.base_block_size))
        digest = copysum.combine(self.size, self.digests, chunk_size=self.cs)
        stub.CommitTransfer(transfer_pb2.CommitTransferRequest(transfer_id=self.transfer_id, digest=digest),
                            timeout=o.call_timeout)
        self.result.digest = digest

    def stream(self, channels: list, session: int, todo: list[int], verified: dict[int, bytes],
               local: set[bytes], base: "_Base") -> None:
        """The file read once (chunks in todo), each chunk queued as ZERO, LOCAL or DATA as soon
        as it is read and hashed, in turn on one of the SendChunks streams (one per channel)."""
        o = self.options
        lanes = [_Lane(channel, max(1, o.chunks_in_flight // len(channels)), o.stall_timeout) for channel in channels]
        turn = itertools.cycle(lanes)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        extents = Extents(fd)

        def consume(k: int, digest: bytes, data) -> None:
            self.digests[k] = digest
            n = len(data) if data is not None else _chunk_length(self.size, self.cs, k)
            if verified.get(k) == digest:
                pass  # the receiver has it already, at its place
            elif data is None:
                next(turn).put(encode_chunk(self.transfer_id, session, k, digest, ZERO))
                self.result.bytes_zero += n
            elif digest in local:
                next(turn).put(encode_chunk(self.transfer_id, session, k, digest, LOCAL))
                self.result.bytes_reused += n
            elif (changed := base.changed(k * self.cs, data)) is not None:
                next(turn).put(encode_chunk(self.transfer_id, session, k, digest, BASE,
                                            [data[a:a + m] for a, m in changed], changed))
                sent = sum(m for _, m in changed)
                self.result.bytes_sent += sent
                self.result.bytes_reused += n - sent
                self.result.chunks_sent += 1
            else:
                off = k * self.cs
                segments = extents.segments(off, off + n)
                if segments == [(off, off + n)]:
                    next(turn).put(encode_chunk(self.transfer_id, session, k, digest, DATA, [data]))
                else:  # only the data ranges: holes inside the chunk stay holes
                    next(turn).put(encode_chunk(self.transfer_id, session, k, digest, DATA,
                                                [data[a - off:b - off] for a, b in segments],
                                                [(a - off, b - a) for a, b in segments]))
                self.result.bytes_sent += sum(b - a for a, b in segments)
                self.result.chunks_sent += 1
            self.done += n
            self.report()

        try:
            try:
                copysum.read_chunks(self.path, consume, indices=todo, chunk_size=self.cs)
            finally:
                os.close(fd)
            for lane in lanes:
                lane.put(_END)
            for lane in lanes:
                lane.finish()
        except _Broken:
            for lane in lanes:  # the receiver's own answer, when one ended the stream, says more
                lane.raise_answer()
            raise
        finally:
            for lane in lanes:
                lane.close()


_END = object()


class _Base:
    """The block digests of the receiver's earlier copy of the file, if it has one."""

    def __init__(self, digests: bytes, block_size: int):
        self.digests, self.block = digests, block_size
        self.count = len(digests) // BLOCK_DIGEST

    def changed(self, off: int, data) -> list[tuple[int, int]] | None:
        """The (offset, length) runs of blocks of the chunk at off that differ from the
        earlier copy; None when there is none, or when more than half of the chunk differs
        (then the whole chunk is as cheap)."""
        if not self.count or off % self.block:
            return None
        first, runs, n = off // self.block, [], len(data)
        for i, a in enumerate(range(0, n, self.block)):
            b = first + i
            piece = data[a:a + self.block]
            if b < self.count and blake3(piece).digest()[:BLOCK_DIGEST] == \
                    self.digests[b * BLOCK_DIGEST:(b + 1) * BLOCK_DIGEST]:
                continue
            if runs and runs[-1][0] + runs[-1][1] == a:
                runs[-1] = (runs[-1][0], runs[-1][1] + len(piece))
            else:
                runs.append((a, len(piece)))
        return runs if sum(m for _, m in runs) <= n // 2 else None


class _Lane:
    """One SendChunks stream of an attempt, fed through a bounded queue; broken when the
    receiver ends it or when it takes nothing for stall_timeout (a link that is down)."""

    def __init__(self, channel, depth: int, stall_timeout: float):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stall_timeout = stall_timeout
        self.taken = time.monotonic()
        send = channel.stream_unary(SEND_CHUNKS, request_serializer=None,  # already encoded (encode_chunk)
                                    response_deserializer=transfer_pb2.SendChunksResponse.FromString)
        self.call = send.future(self._requests())

    def _requests(self):
        while True:
            item = self.queue.get()
            self.taken = time.monotonic()
            if item is _END:
                return
            yield item

    def put(self, item) -> None:
        while True:
            if self.call.done():
                raise _Broken("the receiver ended the stream")
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                if time.monotonic() - self.taken > self.stall_timeout:
                    raise _Broken(f"the stream took nothing for {self.stall_timeout:g}s") from None

    def finish(self) -> None:
        """Waits for the receiver's answer (it verifies what is in flight first)."""
        deadline = time.monotonic() + self.stall_timeout
        while not self.call.done():
            if time.monotonic() > deadline:
                raise _Broken(f"no answer to the stream's end in {self.stall_timeout:g}s")
            time.sleep(0.005)
        self.call.result()

    def raise_answer(self) -> None:
        if self.call.done() and not self.call.cancelled() and self.call.exception() is not None:
            raise self.call.exception() from None

    def close(self) -> None:
        self.call.cancel()
        while True:  # free the request thread, wherever it waits
            try:
                self.queue.put_nowait(_END)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass


def send_file(target: str, path, transfer_id: str, *, candidates_hint: Iterable[str] = (),
              progress: Callable[[Progress], None] | None = None,
              options: SendOptions | None = None) -> TransferResult:
    """Sends the file at path to the TransferService at target (host:port) as transfer_id and
    completes it there (verified). candidates_hint: whole-file digests of files the receiver
    may hold (the base image) and ids of earlier transfers to it (an earlier copy of the same
    workspace); chunks found in them are copied there, not sent. progress(Progress) is called
    a few times a second. Retries a broken stream from what the receiver has verified; raises
    TransferFailed (UNAVAILABLE) after options.give_up_after seconds, or the receiver's error
    when it refuses the transfer."""
    check_transfer_id(transfer_id)
    keep_chunk_buffers()
    try:
        sender = _Sender(target, path, transfer_id, list(candidates_hint), progress, options or SendOptions())
    except FileNotFoundError:
        raise errors.NotFound(f"no file {os.fspath(path)} to send") from None
    return sender.run()
