"""The receiving side of transfers: TransferStore, under the manager's state directory.

It verifies every chunk before writing it, appends its index and digest to the transfer's
journal, and completes the transfer (CommitTransfer) only when every chunk is verified and they
combine into the file's digest. After a receiver restart the journal's chunks are read back and
checked before they count. take() hands the completed file over; discard() removes it.

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
import dataclasses
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Iterable

from blake3 import blake3

from ...common import errors, host
from vws.native import copysum
from .io import chunk_length, keep_chunk_buffers, pread, punch_hole, pwrite, replace_file, write_json
from .wire import BASE, BLOCK_DIGEST, CHUNK, DATA, DIGEST_BYTES, LOCAL, ZERO, Chunk, check_transfer_id, max_message_bytes

log = logging.getLogger("vws.manager.transfer")

MAX_CHUNK = 16 << 20
RECORD = 8 + DIGEST_BYTES  # a journal record: index (u64 little-endian) + digest
# Blocks of an earlier copy, for chunks that differ from it in a few places: 64 KiB (a qcow2
# cluster) or larger for large files, so that their digests (16 bytes each) fit in 2 MiB.
MIN_BLOCK = 64 << 10
MAX_BLOCK_DIGESTS = 2 << 20


def _key(transfer_id: str) -> str:
    return blake3(transfer_id.encode()).hexdigest()[:32]


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
            write_json(self.meta_path, meta)
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
        k, n = chunk.index, chunk_length(self.size, self.chunk_size, chunk.index)
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
                data = pread(fd, length, at)
            finally:
                os.close(fd)
            if blake3(data).digest() != chunk.digest:
                with self.lock:
                    self.local.pop(chunk.digest, None)
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: the local copy in {path} no longer "
                                     "matches its digest; start the transfer again (it will be sent)")
            self.touched.add(k)
            pwrite(self.fd, data, off)
            received, reused = 0, n
        elif chunk.source == BASE:
            if self.base is None:
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: no earlier copy to build it on "
                                     "(any more); start the transfer again")
            fd = os.open(self.base[0], os.O_RDONLY | os.O_CLOEXEC)
            try:
                whole = bytearray(pread(fd, n, off).ljust(n, b"\0"))
            finally:
                os.close(fd)
            for at, piece in self._pieces(chunk, n):
                whole[at:at + len(piece)] = piece
            if blake3(whole).digest() != chunk.digest:
                self.base_failed = True
                raise errors.Aborted(f"chunk {k} of transfer {self.transfer_id}: the earlier copy it was built on has "
                                     "changed; start the transfer again (it will not be used)")
            self.touched.add(k)
            pwrite(self.fd, whole, off)
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
                pwrite(self.fd, piece, off + at)
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
            punch_hole(self.fd, off, n)

    def _record(self, k: int, digest: bytes) -> None:
        with self.lock:
            os.write(self.journal, k.to_bytes(8, "little") + digest)
            self.verified[k] = digest
            # Later chunks with the same content are copied from here.
            self.local.setdefault(digest, (str(self.data_path), k * self.chunk_size,
                                           chunk_length(self.size, self.chunk_size, k)))


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
            write_json(self._files_path, self._files)
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
            write_json(self._files_path, self._files)
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
                write_json(self._files_path, self._files)
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
            index = {d: (str(t.data_path), k * cs, chunk_length(t.size, cs, k)) for k, d in t.verified.items()}
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
                index.setdefault(d, (str(path), k * cs, chunk_length(size, cs, k)))
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
        replace_file(saved, blocks)
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
        replace_file(saved, b"".join(digests))

