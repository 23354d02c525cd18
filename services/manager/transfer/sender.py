"""The sending side of a transfer: send_file.

It reads its file once through the native core (copysum.read_chunks: each chunk hashed with
BLAKE3 in the same pass as the read). Before that it asks the receiver (StartTransfer) what it
holds: the chunks of this transfer it has verified already (a resumed transfer), and the
digests of chunks it can copy from files of its own (the base image in its image cache, an
earlier copy of the same workspace, an earlier transfer). Then, in SendChunks streams (several
at once, each on its own connection), each chunk goes as CHUNK_SOURCE_ZERO (all zeros: stays a
hole), LOCAL (the receiver copies it, verified, from its own file), BASE (the receiver's
earlier copy of the file at the same place, with only the 64 KiB blocks that differ from it
sent: the receiver gave their digests) or DATA (its data ranges only, so holes inside a chunk
stay holes too). A broken stream (link down, UNAVAILABLE, a deadline, no progress for
stall_timeout) is started again with backoff from what the receiver has verified, until
give_up_after."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import time
from typing import Callable, Iterable

import grpc
from blake3 import blake3

from ...common import clients, errors
from vws.native import copysum
from vws.native.copysum_py import Extents
from ...v1 import transfer_pb2, transfer_pb2_grpc
from .io import chunk_length, keep_chunk_buffers
from .wire import (BASE, BLOCK_DIGEST, CHUNK, DATA, LOCAL, SEND_CHUNKS, ZERO, channel_options, check_transfer_id,
                   encode_chunk)

log = logging.getLogger("vws.manager.transfer")

# A stream that ends with one of these is started again (from what the receiver verified).
RETRYABLE = (errors.Unavailable, errors.DeadlineExceeded, errors.Aborted, errors.Cancelled, errors.DataLoss)
# A chunk refused as corrupt this many times in a row is not a passing fault: give up.
MAX_DATA_LOSS = 3


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


class _Broken(errors.Unavailable):
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
                error = exc if isinstance(exc, _Broken) else errors.from_rpc_error(exc)
                code, message = error.grpc_status_code, error.message
                losses = losses + 1 if isinstance(error, errors.DataLoss) else 0
                if not isinstance(error, RETRYABLE) or losses >= MAX_DATA_LOSS:
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
        self.done = self.size - sum(chunk_length(self.size, self.cs, k) for k in todo)
        if self.result.resumes:
            self.result.bytes_resumed += self.done
        if todo:
            self.stream(channels, opening.session, todo, verified, local,
                        BaseBlocks(opening.base_block_digests, opening.base_block_size))
        digest = copysum.combine(self.size, self.digests, chunk_size=self.cs)
        stub.CommitTransfer(transfer_pb2.CommitTransferRequest(transfer_id=self.transfer_id, digest=digest),
                            timeout=o.call_timeout)
        self.result.digest = digest

    def stream(self, channels: list, session: int, todo: list[int], verified: dict[int, bytes],
               local: set[bytes], base: "BaseBlocks") -> None:
        """The file read once (chunks in todo), each chunk queued as ZERO, LOCAL or DATA as soon
        as it is read and hashed, in turn on one of the SendChunks streams (one per channel)."""
        o = self.options
        lanes = [_Lane(channel, max(1, o.chunks_in_flight // len(channels)), o.stall_timeout) for channel in channels]
        turn = itertools.cycle(lanes)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        extents = Extents(fd)

        def consume(k: int, digest: bytes, data) -> None:
            self.digests[k] = digest
            n = len(data) if data is not None else chunk_length(self.size, self.cs, k)
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


class BaseBlocks:
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
