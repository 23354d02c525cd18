"""What the sender and the receiver of a transfer agree on over the wire: the chunk sources,
ids, digest sizes, message limits and channel options, and SendChunksRequest's codec.

Chunks are by far the bulk of the bytes: they are encoded and decoded here, by hand, to the
message's wire format, so that a chunk's bytes are copied once on each side (the generated
Python classes copy them three times, costing a third of the throughput)."""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from google.protobuf.message import DecodeError

from ...common import errors
from vws.native import copysum
from ...v1 import transfer_pb2

CHUNK = copysum.CHUNK
# Room in a message beyond the chunk's bytes (index, digest, ids, range headers).
MESSAGE_OVERHEAD = 64 << 10
TRANSFER_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,200}")
DIGEST_BYTES = 32
# Digests of the blocks of the receiver's earlier copy (StartTransferResponse.base_block_digests).
BLOCK_DIGEST = 16
SEND_CHUNKS = "/vws.v1.TransferService/SendChunks"
ZERO, DATA, LOCAL, BASE = (transfer_pb2.CHUNK_SOURCE_ZERO, transfer_pb2.CHUNK_SOURCE_DATA,
                           transfer_pb2.CHUNK_SOURCE_LOCAL, transfer_pb2.CHUNK_SOURCE_BASE)


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


# ============================================================================ SendChunksRequest

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
    """SendChunksRequest bytes -> Chunk (same result as the generated class's parse); bytes that
    are not one raise DecodeError, as the generated parse does (the server answers INVALID_ARGUMENT)."""
    try:
        return _decode_chunk(buf)
    except (ValueError, TypeError) as exc:  # a truncated varint, a bad wire type, an id that is not UTF-8
        raise DecodeError(f"not a SendChunksRequest: {exc}") from None


def _decode_chunk(buf) -> Chunk:
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
