"""The copy-and-checksum core: the Cython extension and its pure-Python twin give the same
digests as each other and as an independent computation with blake3 directly; copies read
back identical; sparse files stay sparse; zero chunks become holes; a digest mismatch or any
error leaves nothing behind; progress reaches the total; digest strings are validated.
No timings here (see bench/test_copy.py)."""
from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from blake3 import blake3

from tests.unit import twins

from vws.native import copysum_py
from vws.native.copysum_py import CHUNK, PROGRESS_STEP, CopyResult, DigestMismatch

try:
    from vws.native import _copysum
except ImportError:  # pragma: no cover - not built
    _copysum = None

needs_ext = pytest.mark.requires(_copysum is None, "Cython extension not built (pip install -e .)")
IMPLS = [pytest.param(_copysum, id="cython", marks=needs_ext), pytest.param(copysum_py, id="python")]
MiB = 1 << 20
ZERO_CHUNK = blake3(bytes(CHUNK)).digest()


# ---- an independent computation of the digest, straight from the definition ----

def ref_chunks(data: bytes, chunk: int = CHUNK) -> list[bytes]:
    return [blake3(data[i:i + chunk]).digest() for i in range(0, len(data), chunk)]


def ref_combine(size: int, chunks: list[bytes], label: str = "4m") -> str:
    header = b"vws-blake3-" + label.encode() + b"\0" + size.to_bytes(8, "little")
    return f"blake3-{label}:" + blake3(header + b"".join(chunks)).hexdigest()


def ref_digest(data: bytes, chunk: int = CHUNK, label: str = "4m") -> str:
    return ref_combine(len(data), ref_chunks(data, chunk), label)


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.write_bytes(data)
    return path


def random_bytes(n: int, seed: int) -> bytes:
    """Incompressible, reproducible, cheap: a BLAKE3 extendable output."""
    return blake3(seed.to_bytes(8, "little")).digest(length=n) if n else b""


def sparse_file(path: pathlib.Path, size: int, extents: list[tuple[int, bytes]]) -> pathlib.Path:
    """A file of `size` bytes holding each (offset, data) and holes everywhere else."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for off, data in extents:
            os.pwrite(fd, data, off)
        os.fsync(fd)  # allocate now, so st_blocks is final
    finally:
        os.close(fd)
    return path


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def is_sparse(path) -> bool:
    return allocated(path) < os.stat(path).st_size


def require_holes(path) -> None:
    """Fails (never skips) where the test files' filesystem does not keep holes: CI's does."""
    if not is_sparse(path):
        pytest.fail(f"the filesystem of {path} does not keep holes; run the tests on one that does "
                    "(ext4, xfs, tmpfs)", pytrace=False)


def same_content(a, b) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


# ---- digests: both implementations, against the definition ----

SIZES = [0, 1, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 12345]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_copy_digest_matches_the_definition(impl, tmp_path, size):
    data = random_bytes(size, size)
    src = write(tmp_path / "src", data)
    r = impl.copy_file(src, tmp_path / "dst")
    assert isinstance(r, CopyResult)
    assert r.digest == ref_digest(data)
    assert r.size == size
    assert r.chunk_digests == ref_chunks(data)
    assert len(r.chunk_digests) == -(-size // CHUNK)
    assert all(len(d) == 32 for d in r.chunk_digests)
    assert r.data_bytes == size and r.written_bytes == size
    assert r.seconds >= 0
    assert (tmp_path / "dst").read_bytes() == data
    assert not (tmp_path / "dst.partial").exists()
    d = impl.digest_file(src)
    assert (d.digest, d.size, d.chunk_digests, d.data_bytes, d.written_bytes) == \
        (r.digest, size, r.chunk_digests, size, 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_file_has_no_chunks(impl, tmp_path):
    src = write(tmp_path / "empty", b"")
    r = impl.copy_file(src, tmp_path / "dst")
    assert r.chunk_digests == []
    assert r.digest == "blake3-4m:" + blake3(b"vws-blake3-4m\0" + bytes(8)).hexdigest()
    assert (tmp_path / "dst").read_bytes() == b""


@needs_ext
def test_both_implementations_agree_on_the_same_files(tmp_path):
    data = random_bytes(3 * CHUNK + 777, 7)
    src = write(tmp_path / "src", data)
    a = _copysum.copy_file(src, tmp_path / "a")
    b = copysum_py.copy_file(src, tmp_path / "b")
    assert (a.digest, a.chunk_digests, a.data_bytes, a.written_bytes) == \
        (b.digest, b.chunk_digests, b.data_bytes, b.written_bytes)
    assert a.digest == _copysum.digest_file(src).digest == copysum_py.digest_file(src).digest


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk, label", [(64 << 10, "64k"), (1 << 20, "1m"), (5000, "5000b")])
def test_other_chunk_sizes_go_round_the_ring_and_carry_their_own_label(impl, tmp_path, chunk, label):
    """Many chunks per file, so the extension's ring of buffers wraps many times."""
    data = random_bytes(3 * MiB + 4321, chunk)
    data = data[:MiB] + bytes(2 * chunk) + data[MiB + 2 * chunk:]  # some zero chunks too
    src = write(tmp_path / "src", data)
    r = impl.copy_file(src, tmp_path / "dst", chunk_size=chunk)
    assert r.digest == ref_digest(data, chunk, label)
    assert r.digest.startswith(f"blake3-{label}:")
    assert (tmp_path / "dst").read_bytes() == data
    assert impl.digest_file(src, chunk_size=chunk).digest == r.digest
    impl.copy_file(src, tmp_path / "again", chunk_size=chunk, expected=r.digest)
    with pytest.raises(ValueError, match="algorithm"):
        impl.copy_file(src, tmp_path / "x", expected=r.digest)  # a 4m copy cannot match a 64k digest


@pytest.mark.parametrize("impl", IMPLS)
def test_accepts_path_like_str_and_bytes(impl, tmp_path):
    data = random_bytes(1000, 1)
    write(tmp_path / "src", data)
    r1 = impl.copy_file(str(tmp_path / "src"), str(tmp_path / "a"))
    r2 = impl.copy_file(tmp_path / "src", tmp_path / "b")
    r3 = impl.copy_file(os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "c"))
    assert r1.digest == r2.digest == r3.digest == ref_digest(data)
    assert impl.digest_file(os.fsencode(tmp_path / "src")).digest == r1.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "src"]


@pytest.mark.parametrize("impl", IMPLS)
def test_overwrites_an_existing_destination(impl, tmp_path):
    src = write(tmp_path / "src", random_bytes(CHUNK + 5, 3))
    dst = write(tmp_path / "dst", b"old content that is longer " * 1000)
    impl.copy_file(src, dst)
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("impl", IMPLS)
def test_fsync_flag(impl, tmp_path):
    data = random_bytes(CHUNK + 3, 4)
    src = write(tmp_path / "src", data)
    r = impl.copy_file(src, tmp_path / "dst", fsync=True)
    assert r.digest == ref_digest(data)
    assert (tmp_path / "dst").read_bytes() == data


# ---- sparse files ----

@pytest.mark.parametrize("impl", IMPLS)
def test_sparse_file_stays_sparse_and_reads_back_identical(impl, tmp_path):
    size = 16 * CHUNK + 5000
    extents = [
        (0, random_bytes(CHUNK, 10)),                    # a whole chunk
        (3 * CHUNK + 8192, random_bytes(12288, 11)),     # a small extent inside a chunk
        (6 * CHUNK - 4096, random_bytes(8192, 12)),      # straddling a chunk boundary
        (9 * CHUNK, random_bytes(2 * CHUNK, 13)),        # two whole chunks
        (size - 3000, random_bytes(3000, 14)),           # the short last chunk
    ]
    src = sparse_file(tmp_path / "src", size, extents)
    require_holes(src)
    r = impl.copy_file(src, tmp_path / "dst")
    data = src.read_bytes()
    assert r.digest == ref_digest(data)
    assert same_content(src, tmp_path / "dst")
    assert os.stat(tmp_path / "dst").st_size == size
    os.sync()
    assert allocated(tmp_path / "dst") <= allocated(src)
    # Only the data ranges are read and written: holes cost nothing.
    data_len = sum(len(d) for _, d in extents)
    assert data_len <= r.data_bytes <= allocated(src)
    assert r.written_bytes == r.data_bytes
    d = impl.digest_file(src)
    assert (d.digest, d.data_bytes) == (r.digest, r.data_bytes)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_sparse_file_holes_are_not_read(impl, tmp_path):
    size = 8 << 30  # 8 GiB, of which 2 chunks hold data
    a, b = random_bytes(CHUNK, 20), random_bytes(100, 21)
    src = sparse_file(tmp_path / "src", size, [(CHUNK * 100, a), (size - 100, b)])
    require_holes(src)
    r = impl.copy_file(src, tmp_path / "dst")
    n = size // CHUNK
    chunks = [ZERO_CHUNK] * n
    chunks[100] = blake3(a).digest()
    chunks[n - 1] = blake3(bytes(CHUNK - 100) + b).digest()
    assert r.chunk_digests == chunks
    assert r.digest == ref_combine(size, chunks)
    assert r.data_bytes <= 2 * CHUNK  # not 8 GiB
    os.sync()
    assert os.stat(tmp_path / "dst").st_size == size
    assert allocated(tmp_path / "dst") <= allocated(src)
    with open(tmp_path / "dst", "rb") as f:
        f.seek(CHUNK * 100)
        assert f.read(CHUNK) == a
        f.seek(size - 200)
        assert f.read() == bytes(100) + b


@pytest.mark.parametrize("impl", IMPLS)
def test_all_zero_data_chunks_become_holes(impl, tmp_path):
    """Zeros written out (allocated in the source) are read, found to be zero, and not
    written: the copy has a hole there and the chunk's digest is the zero-chunk digest."""
    data = random_bytes(CHUNK, 30) + bytes(2 * CHUNK) + random_bytes(CHUNK // 2, 31) + bytes(1000)
    src = write(tmp_path / "src", data)
    os.sync()
    r = impl.copy_file(src, tmp_path / "dst")
    assert r.digest == ref_digest(data)
    assert r.chunk_digests[1] == r.chunk_digests[2] == ZERO_CHUNK == copysum_py.zero_chunk_digest(CHUNK)
    assert r.data_bytes == len(data)
    assert r.written_bytes == len(data) - 2 * CHUNK  # the last chunk has data, so all of it is written
    assert (tmp_path / "dst").read_bytes() == data
    os.sync()
    if allocated(src) >= len(data):  # the filesystem allocates what is written
        assert allocated(tmp_path / "dst") <= allocated(src) - 2 * CHUNK


@pytest.mark.parametrize("impl", IMPLS)
def test_a_file_of_zeros_copies_to_a_hole(impl, tmp_path):
    src = write(tmp_path / "src", bytes(3 * CHUNK + 17))
    r = impl.copy_file(src, tmp_path / "dst")
    assert r.written_bytes == 0
    assert r.digest == ref_digest(bytes(3 * CHUNK + 17))
    assert (tmp_path / "dst").read_bytes() == bytes(3 * CHUNK + 17)
    os.sync()
    assert allocated(tmp_path / "dst") <= 4096


@needs_ext
@pytest.mark.parametrize("seed", range(6))
def test_implementations_agree_on_random_sparse_layouts(tmp_path, seed):
    """Random extents of data, of written zeros and holes, small chunks (so the extension's
    ring wraps often and holes skip it): every field of the result is the same in both, the
    digest is the definition's, and both copies read back as the source."""
    import random
    rng = random.Random(seed)
    chunk = rng.choice([4096, 64 << 10, 100_000, 1 << 20])
    size = rng.randrange(1, 24 * MiB)
    extents = []
    for i in range(rng.randrange(0, 30)):
        off, n = rng.randrange(size), rng.randrange(1, 2 * chunk)
        n = min(n, size - off)
        extents.append((off, bytes(n) if rng.random() < 0.3 else random_bytes(n, seed * 1000 + i)))
    src = sparse_file(tmp_path / "src", size, extents)
    data = src.read_bytes()
    a = _copysum.copy_file(src, tmp_path / "a", chunk_size=chunk)
    b = copysum_py.copy_file(src, tmp_path / "b", chunk_size=chunk)
    fields = ("digest", "size", "chunk_digests", "data_bytes", "written_bytes")
    assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]
    assert a.chunk_digests == ref_chunks(data, chunk)
    assert (tmp_path / "a").read_bytes() == data == (tmp_path / "b").read_bytes()
    d = _copysum.digest_file(src, chunk_size=chunk)
    assert (d.digest, d.data_bytes) == (a.digest, a.data_bytes)


@needs_ext
def test_copies_in_several_threads_at_once(tmp_path):
    """Each call has its own pipeline (and its own ring but for the one spare kept)."""
    import threading
    sources = [write(tmp_path / f"src{i}", random_bytes(2 * CHUNK + i * 1000, 70 + i)) for i in range(4)]
    results: dict[int, str] = {}

    def copy(i):
        results[i] = _copysum.copy_file(sources[i], tmp_path / f"dst{i}").digest
    threads = [threading.Thread(target=copy, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, src in enumerate(sources):
        assert results[i] == ref_digest(src.read_bytes())
        assert (tmp_path / f"dst{i}").read_bytes() == src.read_bytes()


# ---- verification and clean-up ----

@pytest.mark.parametrize("impl", IMPLS)
def test_expected_digest_is_checked_before_the_copy_appears(impl, tmp_path):
    data = random_bytes(CHUNK + 99, 40)
    src = write(tmp_path / "src", data)
    good = ref_digest(data)
    r = impl.copy_file(src, tmp_path / "ok", expected=good)
    assert r.digest == good and (tmp_path / "ok").read_bytes() == data
    impl.copy_file(src, tmp_path / "ok2", expected=good.upper().replace("BLAKE3-4M", "blake3-4m"))

    bad = "blake3-4m:" + "0" * 64
    with pytest.raises(DigestMismatch) as e:
        impl.copy_file(src, tmp_path / "dst", expected=bad)
    assert isinstance(e.value, ValueError)
    assert (e.value.expected, e.value.actual) == (bad, good)
    assert bad in str(e.value) and good in str(e.value)
    assert not (tmp_path / "dst").exists()
    assert not (tmp_path / "dst.partial").exists()

    old = write(tmp_path / "old", b"keep me")
    with pytest.raises(DigestMismatch):
        impl.copy_file(src, old, expected=bad)
    assert old.read_bytes() == b"keep me"
    assert not (tmp_path / "old.partial").exists()


@pytest.mark.parametrize("impl", IMPLS)
def test_malformed_expected_digest_fails_before_anything_is_made(impl, tmp_path):
    src = write(tmp_path / "src", b"abc")
    with pytest.raises(ValueError, match="64 hex digits"):
        impl.copy_file(src, tmp_path / "dst", expected="blake3-4m:abc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("impl", IMPLS)
def test_errors_leave_nothing_behind(impl, tmp_path):
    with pytest.raises(FileNotFoundError):
        impl.copy_file(tmp_path / "missing", tmp_path / "dst")
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        impl.copy_file(tmp_path / "dir", tmp_path / "dst")
    with pytest.raises(FileNotFoundError):
        impl.copy_file(write(tmp_path / "src", b"x"), tmp_path / "no" / "such" / "dir")
    with pytest.raises(ValueError, match="chunk_size"):
        impl.copy_file(tmp_path / "src", tmp_path / "dst", chunk_size=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "src"]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_write_error_is_raised_and_cleans_up(impl, tmp_path):
    """A file size limit (RLIMIT_FSIZE, in a child process) makes the writes fail with EFBIG
    half-way through: OSError, and neither dst nor dst.partial is left."""
    write(tmp_path / "src", random_bytes(3 * CHUNK, 80))
    code = f"""
import errno, resource, signal, sys
from vws.native import {impl.__name__.rpartition('.')[2]} as impl
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({CHUNK + 4096}, resource.RLIM_INFINITY))
try:
    impl.copy_file({str(tmp_path / "src")!r}, {str(tmp_path / "dst")!r})
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["EFBIG"], out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@needs_ext
@pytest.mark.parametrize("fail_at", [0, 5, 30])
def test_a_hashing_error_in_either_thread_stops_the_copy_and_cleans_up(tmp_path, monkeypatch, fail_at):
    """The extension's hashing (helper thread or I/O thread) failing at the n-th chunk: the
    error is raised, nothing is left behind, the helper thread is gone."""
    import threading
    src = write(tmp_path / "src", random_bytes(40 * (64 << 10), 90))
    calls = []

    class HashFailed(Exception):
        pass

    def failing(data):
        calls.append(1)
        if len(calls) > fail_at:
            raise HashFailed(len(calls))
        return blake3(data)
    monkeypatch.setattr(_copysum, "blake3", failing)
    before = threading.active_count()
    with pytest.raises(HashFailed):
        _copysum.copy_file(src, tmp_path / "dst", chunk_size=64 << 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert threading.active_count() == before


@pytest.mark.parametrize("impl", IMPLS)
def test_an_exception_from_progress_stops_the_copy_and_cleans_up(impl, tmp_path):
    size = 3 * PROGRESS_STEP
    src = sparse_file(tmp_path / "src", size, [(PROGRESS_STEP - CHUNK, random_bytes(2 * CHUNK, 50))])

    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop(done)
    with pytest.raises(Stop):
        impl.copy_file(src, tmp_path / "dst", progress=progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---- progress ----

@pytest.mark.parametrize("impl", IMPLS)
def test_progress_reaches_the_total(impl, tmp_path):
    size = 3 * PROGRESS_STEP + 12345  # sparse: a few chunks of data, the rest holes
    extents = [(0, random_bytes(CHUNK, 60)), (PROGRESS_STEP + 8 * CHUNK, random_bytes(CHUNK, 61)),
               (size - 5, b"12345")]
    src = sparse_file(tmp_path / "src", size, extents)
    calls = []
    impl.copy_file(src, tmp_path / "dst", progress=lambda d, t: calls.append((d, t)))
    assert calls == [(PROGRESS_STEP, size), (2 * PROGRESS_STEP, size), (3 * PROGRESS_STEP, size), (size, size)]
    calls.clear()
    impl.digest_file(src, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (size, size) and len(calls) == 4


@pytest.mark.parametrize("impl", IMPLS)
def test_progress_on_small_and_empty_files_is_called_once_at_the_end(impl, tmp_path):
    for name, data in (("empty", b""), ("small", b"hello")):
        calls = []
        impl.copy_file(write(tmp_path / name, data), tmp_path / (name + ".copy"),
                       progress=lambda d, t: calls.append((d, t)))
        assert calls == [(len(data), len(data))]


# ---- the digest format ----

def test_combine_and_zero_chunk_digest():
    assert copysum_py.combine(0, []) == ref_combine(0, [])
    chunks = [b"\1" * 32, b"\2" * 32]
    assert copysum_py.combine(CHUNK + 1, chunks) == ref_combine(CHUNK + 1, chunks)
    with pytest.raises(ValueError, match="2 chunks"):
        copysum_py.combine(CHUNK + 1, chunks[:1])
    with pytest.raises(ValueError, match="32"):
        copysum_py.combine(10, [b"short"])
    with pytest.raises(ValueError):
        copysum_py.combine(-1, [])
    for n in (0, 1, 4096, CHUNK):
        assert copysum_py.zero_chunk_digest(n) == blake3(bytes(n)).digest()


def test_parse_digest():
    hexpart = "ab" * 32
    assert copysum_py.parse_digest("blake3-4m:" + hexpart) == ("blake3-4m", bytes.fromhex(hexpart))
    assert copysum_py.parse_digest("blake3-4m:" + hexpart.upper())[1] == bytes.fromhex(hexpart)
    assert copysum_py.parse_digest("blake3-64k:" + hexpart, chunk_size=64 << 10)[0] == "blake3-64k"
    for text, message in [
        (hexpart, "no ':'"),
        ("sha256:" + hexpart, "algorithm 'sha256'"),
        ("blake3-1m:" + hexpart, "expected 'blake3-4m'"),
        ("blake3-4m:" + hexpart[:-1], "64 hex digits, got 63"),
        ("blake3-4m:" + hexpart + "0", "64 hex digits, got 65"),
        ("blake3-4m:" + "zz" * 32, "not all hex digits"),
        ("blake3-4m: " + hexpart[1:], "not all hex digits"),
        ("", "no ':'"),
    ]:
        with pytest.raises(ValueError, match=message):
            copysum_py.parse_digest(text)
    with pytest.raises(ValueError, match="must be a str"):
        copysum_py.parse_digest(b"blake3-4m:" + hexpart.encode())  # type: ignore[arg-type]


# ---- the modules ----

@needs_ext
def test_extension_shares_the_twins_types():
    for name in ("CHUNK", "PROGRESS_STEP", "CopyResult", "DigestMismatch", "chunk_count", "combine", "parse_digest",
                 "zero_chunk_digest"):
        assert getattr(_copysum, name) is getattr(copysum_py, name)
    assert CHUNK == 4 << 20


@needs_ext
def test_the_io_loop_is_declared_without_the_gil():
    """Whether copying and hashing really overlap is a matter of timing, measured in bench/;
    here, that the loop is written to release the GIL."""
    source = (pathlib.Path(_copysum.__file__).parent / "_copysum.pyx").read_text()
    assert "with nogil:" in source


def test_public_module_prefers_the_extension():
    from vws.native import copysum
    want = twins.expected(_copysum)
    assert copysum.IMPLEMENTATION == want
    impl = _copysum if want == "cython" else copysum_py
    assert copysum.copy_file is impl.copy_file and copysum.digest_file is impl.digest_file
    assert copysum.read_chunks is impl.read_chunks
    assert copysum.DigestMismatch is DigestMismatch and copysum.CopyResult is CopyResult
    assert copysum.CHUNK == CHUNK
    importlib.reload(copysum)


def test_no_extensions_switch_forces_the_twin():
    assert twins.chosen_with_no_extensions("copysum", "copy_file") == ["python", "vws.native.copysum_py"]


# ---- read_chunks: each chunk with its digest, in the same pass as the read (transfers) ----

def collect(impl, path, **kwargs) -> tuple[list[tuple[int, bytes, bytes | None]], tuple[int, int]]:
    got = []
    result = impl.read_chunks(path, lambda k, d, data: got.append((k, d, None if data is None else bytes(data))),
                              **kwargs)
    return got, result


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk", [CHUNK, 64 << 10, 5000])
def test_read_chunks_hands_over_every_chunk_in_order_with_its_digest(impl, tmp_path, chunk):
    data = random_bytes(40 * chunk + 321, chunk)
    data = data[:3 * chunk] + bytes(2 * chunk) + data[5 * chunk:]  # two chunks of written zeros
    src = write(tmp_path / "src", data)
    got, (size, data_bytes) = collect(impl, src, chunk_size=chunk)
    assert (size, data_bytes) == (len(data), len(data))
    assert [k for k, _, _ in got] == list(range(-(-len(data) // chunk)))
    assert [d for _, d, _ in got] == ref_chunks(data, chunk)
    for k, _, b in got:
        piece = data[k * chunk:(k + 1) * chunk]
        assert b == (None if piece == bytes(len(piece)) else piece)
    assert got[3][2] is None and got[4][2] is None


@pytest.mark.parametrize("impl", IMPLS)
def test_read_chunks_reads_only_the_chunks_asked_for(impl, tmp_path):
    chunk = 64 << 10
    data = random_bytes(20 * chunk, 5)
    src = write(tmp_path / "src", data)
    want = [0, 2, 3, 11, 19]
    got, (size, data_bytes) = collect(impl, src, chunk_size=chunk, indices=want)
    assert [k for k, _, _ in got] == want
    assert [d for _, d, _ in got] == [ref_chunks(data, chunk)[k] for k in want]
    assert [b for _, _, b in got] == [data[k * chunk:(k + 1) * chunk] for k in want]
    assert (size, data_bytes) == (len(data), len(want) * chunk)
    assert collect(impl, src, chunk_size=chunk, indices=[]) == ([], (len(data), 0))
    for bad, message in (([20], "not within"), ([-1], "not within"), ([3, 3], "increase"), ([4, 2], "increase")):
        with pytest.raises(ValueError, match=message):
            impl.read_chunks(src, lambda *a: None, chunk_size=chunk, indices=bad)


@pytest.mark.parametrize("impl", IMPLS)
def test_read_chunks_of_a_sparse_file_reads_only_its_data(impl, tmp_path):
    size = 64 * CHUNK
    a, b = random_bytes(CHUNK, 1), random_bytes(5000, 2)
    src = sparse_file(tmp_path / "src", size, [(10 * CHUNK, a), (40 * CHUNK + 4096, b)])
    require_holes(src)
    got, (total, data_bytes) = collect(impl, src)
    assert total == size and data_bytes <= CHUNK + 8192
    assert [k for k, _, b_ in got if b_ is not None] == [10, 40]
    assert got[10][2] == a and got[40][2] == bytes(4096) + b + bytes(CHUNK - 4096 - 5000)
    assert all(d == ZERO_CHUNK for k, d, b_ in got if b_ is None)
    assert copysum_py.combine(size, [d for _, d, _ in got]) == ref_digest(src.read_bytes())


@pytest.mark.parametrize("impl", IMPLS)
def test_an_exception_from_consume_stops_the_read(impl, tmp_path):
    import threading
    src = write(tmp_path / "src", random_bytes(30 * (64 << 10), 9))
    seen = []

    class Stop(Exception):
        pass

    def consume(k, d, data):
        seen.append(k)
        if k == 7:
            raise Stop()
    before = threading.active_count()
    with pytest.raises(Stop):
        impl.read_chunks(src, consume, chunk_size=64 << 10)
    assert seen == list(range(8))
    assert threading.active_count() == before


@needs_ext
@pytest.mark.parametrize("seed", range(4))
def test_read_chunks_implementations_agree_on_random_layouts_and_selections(tmp_path, seed):
    import random
    rng = random.Random(seed)
    chunk = rng.choice([4096, 64 << 10, 100_000])
    size = rng.randrange(1, 8 * MiB)
    extents = [(off, bytes(n) if rng.random() < 0.3 else random_bytes(n, seed * 100 + i))
               for i in range(rng.randrange(0, 20))
               for off in [rng.randrange(size)] for n in [min(rng.randrange(1, 2 * chunk), size - off)]]
    src = sparse_file(tmp_path / "src", size, extents)
    n = -(-size // chunk)
    indices = sorted(rng.sample(range(n), rng.randrange(0, n + 1))) if rng.random() < 0.5 else None
    a = collect(_copysum, src, chunk_size=chunk, indices=indices)
    b = collect(copysum_py, src, chunk_size=chunk, indices=indices)
    assert a == b
    data = src.read_bytes()
    assert [d for _, d, _ in a[0]] == [ref_chunks(data, chunk)[k] for k in (indices if indices is not None else range(n))]
