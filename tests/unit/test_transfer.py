"""The transfer layer's parts without a network: the hand-written SendChunksRequest codec
against the generated classes, and the receiving store (TransferStore) driven directly:
verification before writing, the journal across a restart, commit, take, discard, and the
receiver's candidates (earlier transfers, the image cache)."""
from __future__ import annotations

import os
import random

import pytest
from blake3 import blake3
from google.protobuf.message import DecodeError

from vws.common import errors
from vws.manager import transfer
from vws.manager.transfer import DATA, LOCAL, ZERO, Chunk, TransferStore, decode_chunk, encode_chunk
from vws.manager.transfer.sender import BaseBlocks
from vws.native import copysum
from vws.v1 import transfer_pb2

CS = 64 << 10  # small chunks: the store takes any chunk size


def data(n: int, seed: int) -> bytes:
    return blake3(str(seed).encode()).digest(length=n)


def chunks_of(content: bytes, cs: int = CS) -> list[bytes]:
    return [content[i:i + cs] for i in range(0, len(content), cs)]


def as_data(k: int, piece: bytes, session: int = 1, tid: str = "t") -> Chunk:
    return Chunk(tid, session, k, blake3(piece).digest(), DATA, piece, [])


# ---- the codec ----

@pytest.mark.parametrize("seed", range(20))
def test_encoded_chunks_parse_with_the_generated_class_and_back(seed):
    rng = random.Random(seed)
    ranges = [(rng.randrange(1 << 20), rng.randrange(1 << 16)) for _ in range(rng.randrange(3))]
    pieces = [data(rng.randrange(0, 3000), seed * 10 + i) for i in range(rng.randrange(0, 3))]
    fields = dict(transfer_id=rng.choice(["t", "workspaces/w1/disk@2", "x" * 200]), session=rng.randrange(1 << 40),
                  index=rng.randrange(1 << 20), digest=data(32, seed), source=rng.choice([DATA, LOCAL, ZERO]))
    raw = encode_chunk(**fields, pieces=pieces, ranges=ranges)
    generated = transfer_pb2.SendChunksRequest.FromString(raw)
    assert generated.data == b"".join(pieces)
    assert [(r.offset, r.length) for r in generated.data_ranges] == ranges
    for name, value in fields.items():
        assert getattr(generated, name) == value
    c = decode_chunk(generated.SerializeToString())
    assert (c.transfer_id, c.session, c.index, c.digest, c.source, bytes(c.data), c.ranges) == \
        (*fields.values(), b"".join(pieces), ranges)


def test_decoding_skips_unknown_fields_and_refuses_truncated_messages():
    raw = encode_chunk("t", 1, 2, b"d" * 32, DATA, [b"abc"])
    unknown = b"\x48\x05" + b"\x51" + bytes(8) + b"\x5d" + bytes(4)  # fields 9 (varint), 10 (fixed64), 11 (fixed32)
    assert bytes(decode_chunk(unknown + raw).data) == b"abc"
    with pytest.raises(DecodeError, match="truncated"):  # as the generated parse raises
        decode_chunk(raw[:-1])
    assert decode_chunk(encode_chunk("t", -1, 0, b"", ZERO)).session == -1


# ---- the store ----

@pytest.fixture
def store(tmp_path):
    s = TransferStore(tmp_path / "transfer", image_cache=tmp_path / "cache", fsync=False)
    yield s
    s.close()


def send_all(store, tid: str, content: bytes, skip=(), corrupt=None) -> transfer.Received:
    o = store.start(tid, len(content), CS)
    cs = []
    for k, piece in enumerate(chunks_of(content)):
        if k in skip or k in o.verified:
            continue
        c = as_data(k, piece, o.session, tid)
        if piece == bytes(len(piece)):
            c = Chunk(tid, o.session, k, c.digest, ZERO, b"", [])
        elif c.digest in o.local_digests:
            c = Chunk(tid, o.session, k, c.digest, LOCAL, b"", [])
        cs.append(c)
    return store.receive(tid, o.session, cs)


def test_a_transfer_completes_only_verified_and_whole(store):
    content = data(5 * CS + 100, 1)
    send_all(store, "t", content, skip={3})
    with pytest.raises(errors.FailedPrecondition, match="1 of 6 chunks are not verified"):
        store.commit("t", copysum.combine(len(content), [blake3(p).digest() for p in chunks_of(content)],
                                          chunk_size=CS))
    send_all(store, "t", content)
    digest = copysum.combine(len(content), [blake3(p).digest() for p in chunks_of(content)], chunk_size=CS)
    with pytest.raises(errors.DataLoss, match="make the digest"):
        store.commit("t", "blake3-64k:" + "0" * 64)
    assert store.commit("t", digest) == (len(content), digest)
    assert store.commit("t", digest) == (len(content), digest)  # repeated: the same answer
    path = store.take("t")
    assert path.read_bytes() == content
    with pytest.raises(errors.FailedPrecondition, match="taken already"):
        store.take("t")


def test_a_chunk_that_does_not_match_its_digest_is_refused_and_nothing_of_it_is_kept(store):
    content = data(3 * CS, 2)
    o = store.start("t", len(content), CS)
    bad = bytearray(chunks_of(content)[1])
    bad[7] ^= 1
    with pytest.raises(errors.DataLoss, match="chunk 1 .* does not match its digest"):
        store.receive("t", o.session, [Chunk("t", o.session, 1, blake3(chunks_of(content)[1]).digest(), DATA,
                                             bytes(bad), [])])
    with pytest.raises(errors.DataLoss, match="sent as zeros"):
        store.receive("t", o.session, [Chunk("t", o.session, 0, blake3(b"x").digest(), ZERO, b"", [])])
    assert store.start("t", len(content), CS).verified == {}
    partial = next((store.root / "partial").glob("*.data"))
    assert partial.read_bytes() == bytes(len(content))  # nothing written


def test_a_stale_stream_and_bad_requests_are_refused(store):
    content = data(2 * CS, 3)
    old = store.start("t", len(content), CS)
    new = store.start("t", len(content), CS)
    with pytest.raises(errors.Aborted, match="stale"):
        store.receive("t", old.session, [as_data(0, chunks_of(content)[0], old.session)])
    for chunk, message in ((as_data(2, b"x", new.session), "not within"),
                           (Chunk("t", new.session, 0, b"short", DATA, b"", []), "32 bytes"),
                           (Chunk("t", new.session, 0, b"d" * 32, 0, b"", []), "say where"),
                           (Chunk("t", new.session, 0, b"d" * 32, LOCAL, b"", []), "holds no chunk")):
        with pytest.raises((errors.InvalidArgument, errors.Aborted), match=message):
            store.receive("t", new.session, [chunk])
    with pytest.raises(errors.FailedPrecondition, match="StartTransfer first"):
        store.receive("other", 1, [as_data(0, b"x", 1, "other")])
    with pytest.raises(errors.InvalidArgument, match="not a transfer id"):
        store.start("no spaces", 1, CS)
    with pytest.raises(errors.InvalidArgument, match="chunk size"):
        store.start("t", 1, 0)


def test_data_ranges_keep_holes_inside_a_chunk(store, tmp_path):
    content = bytes(1000) + data(3000, 4) + bytes(CS - 4000)
    o = store.start("t", CS, CS)
    store.receive("t", o.session, [Chunk("t", o.session, 0, blake3(content).digest(), DATA,
                                         content[1000:4000], [(1000, 3000)])])
    with pytest.raises(errors.InvalidArgument, match="ranges"):
        store.receive("t", o.session, [Chunk("t", o.session, 0, blake3(content).digest(), DATA,
                                             content[1000:4000], [(CS - 10, 3000)])])
    store.commit("t", copysum.combine(CS, [blake3(content).digest()], chunk_size=CS))
    path = store.take("t", tmp_path / "taken")
    assert path == tmp_path / "taken" and path.read_bytes() == content
    os.sync()
    assert os.stat(path).st_blocks * 512 < CS


def test_after_a_restart_the_journal_counts_only_chunks_that_read_back_right(tmp_path):
    content = data(6 * CS, 5)
    s = TransferStore(tmp_path / "transfer", fsync=False)
    send_all(s, "t", content, skip={4, 5})
    s.close()
    partial = next((tmp_path / "transfer" / "partial").glob("*.data"))
    with open(partial, "r+b") as f:  # chunk 2 lost in a crash, though journaled
        f.seek(2 * CS)
        f.write(bytes(CS))
    s = TransferStore(tmp_path / "transfer", fsync=False)
    assert sorted(s.start("t", len(content), CS).verified) == [0, 1, 3]
    r = send_all(s, "t", content)
    assert r.chunks_verified == 3
    digest = copysum.combine(len(content), [blake3(p).digest() for p in chunks_of(content)], chunk_size=CS)
    s.commit("t", digest)
    assert s.take("t").read_bytes() == content
    s.close()


def test_an_earlier_transfer_and_a_cached_image_serve_as_local_copies(store, tmp_path):
    base = data(8 * CS, 6)
    send_all(store, "w/disk@1", base)
    digests = [blake3(p).digest() for p in chunks_of(base)]
    store.commit("w/disk@1", copysum.combine(len(base), digests, chunk_size=CS))
    new = base[:5 * CS] + data(3 * CS, 7)
    o = store.start("w/disk@2", len(new), CS, candidate_transfer_ids=["w/disk@1"])
    assert set(digests) <= set(o.local_digests)
    sent = [Chunk("w/disk@2", o.session, k, blake3(p).digest(), LOCAL, b"", []) if k < 5
            else as_data(k, p, o.session, "w/disk@2") for k, p in enumerate(chunks_of(new))]
    r = store.receive("w/disk@2", o.session, sent)
    assert (r.bytes_reused, r.bytes_received) == (5 * CS, 3 * CS)

    # An image in the cache, by its digest (chunk digests computed once, checked against it).
    image = data(4 * CS, 8)
    image_digest = copysum.digest_file(_write(tmp_path / "img", image), chunk_size=CS).digest
    (tmp_path / "cache").mkdir()
    _write(tmp_path / "cache" / image_digest.partition(":")[2], image)
    o = store.start("w2/disk", 4 * CS, CS, candidate_digests=[image_digest])
    assert {blake3(p).digest() for p in chunks_of(image)} <= set(o.local_digests)
    # A cache file that is not what its name says is not used.
    liar = "blake3-64k:" + "ab" * 32
    _write(tmp_path / "cache" / ("ab" * 32), data(CS, 9))
    assert store.start("w3/disk", CS, CS, candidate_digests=[liar]).local_digests == []


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_discard_removes_partial_and_completed_copies(store):
    content = data(2 * CS, 10)
    send_all(store, "a", content, skip={1})
    assert store.discard("a")
    assert list((store.root / "partial").iterdir()) == []
    send_all(store, "b", content)
    store.commit("b", copysum.combine(len(content), [blake3(p).digest() for p in chunks_of(content)], chunk_size=CS))
    assert store.discard("b") and list((store.root / "done").iterdir()) == []
    assert not store.discard("b")
    with pytest.raises(errors.NotFound):
        store.take("b")


def test_a_chunk_that_differs_from_an_earlier_copy_in_a_few_blocks_is_built_on_it(store):
    cs = 4 * transfer.MIN_BLOCK
    block = transfer.MIN_BLOCK
    old = data(3 * cs, 11)
    o = store.start("w/disk@1", len(old), cs)
    store.receive("w/disk@1", o.session, [as_data(k, p, o.session, "w/disk@1") for k, p in enumerate(chunks_of(old, cs))])
    store.commit("w/disk@1", copysum.combine(len(old), [blake3(p).digest() for p in chunks_of(old, cs)], chunk_size=cs))
    store.take("w/disk@1")
    new = bytearray(old)
    new[cs + block + 5:cs + block + 10] = b"12345"  # chunk 1, its block 1
    new = bytes(new)
    o = store.start("w/disk@2", len(new), cs, candidate_transfer_ids=["w/disk@1"])
    assert o.base_block_size == block
    assert o.base_block_digests == b"".join(blake3(p).digest()[:16] for p in chunks_of(old, block))
    changed = BaseBlocks(o.base_block_digests, o.base_block_size).changed(cs, memoryview(new)[cs:2 * cs])
    assert changed == [(block, block)]
    piece = new[cs + block:cs + 2 * block]
    r = store.receive("w/disk@2", o.session, [
        Chunk("w/disk@2", o.session, 1, blake3(new[cs:2 * cs]).digest(), transfer.BASE, piece, changed)])
    assert (r.bytes_received, r.bytes_reused) == (block, cs - block)
    # A base chunk that does not come out right: refused, and the earlier copy not offered again.
    with pytest.raises(errors.Aborted, match="has changed"):
        store.receive("w/disk@2", o.session, [
            Chunk("w/disk@2", o.session, 2, blake3(b"other").digest(), transfer.BASE, piece, changed)])
    assert store.start("w/disk@2", len(new), cs, candidate_transfer_ids=["w/disk@1"]).base_block_digests == b""
