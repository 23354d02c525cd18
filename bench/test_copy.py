"""Copy-and-checksum (vws.native copysum: one pass, BLAKE3 per 4 MiB chunk) beside plain
copies measured in the same run.

(1) A 1 GiB random file in page cache: copy_file (copy + digest) against `dd bs=4M` copying
    it alone (goal <= 1.25x) and against `cp` then `sha256sum` of the copy (goal: faster);
    the pure-Python twin's time for comparison (one round).
(2) A 4 GiB sparse file holding 200 MiB of data (50 extents of 4 MiB, scattered), in two
    layouts: extents on chunk boundaries, and each shifted so that it straddles two chunks
    (then 100 chunks hold data and each is hashed whole, 400 MiB of hashing). copy_file
    against dd of a plain 200 MiB file (goal <= 2x), and the copy's allocated bytes against
    the original's (goal: as sparse as the original).

Method. Every timed run copies from page cache into newly allocated page cache, as dd does:
before each one (_prepare) the destinations are deleted, `sync` runs, the source is read
through (on this machine DAMON pages out page cache left idle for a minute) and as many
bytes as the run will write are written to a scratch file and deleted, from each CPU.
The anchors run in each round's set-up (in turns first and second), just before the
target, so a change of load on the host hits all alike; the table shows medians of ROUNDS.
Files live under pytest's tmp directory (one filesystem for sources and copies).

copy_file needs two cores (copying on one, hashing on the other) to stay near dd; when
other processes keep the CPUs busy it falls back to hashing in the copying thread, i.e. to
the cost of copy plus hash. Each test therefore also reports how much of the CPUs other
processes used during its timed runs (from /proc/stat, less this process and its children)."""
from __future__ import annotations

import os
import pathlib
import random
import resource
import subprocess
import sys
import threading
import time

import pytest
from blake3 import blake3

from bench.conftest import median
from vws.native import copysum, copysum_py

try:
    from vws.native import _copysum
except ImportError:  # pragma: no cover
    _copysum = None

GROUP = "copy"
ROUNDS = 7
MiB = 1 << 20
GiB = 1 << 30
CHUNK = copysum.CHUNK
BIG = 1 * GiB
SPARSE = 4 * GiB
EXTENTS = 50  # of 4 MiB: 200 MiB of data
_TIMES: dict[str, list[float]] = {}


def _write_random(path, size: int, seed: int) -> None:
    """Incompressible content, 64 MiB at a time (BLAKE3 extendable output)."""
    with open(path, "wb") as f:
        for i, off in enumerate(range(0, size, 64 * MiB)):
            f.write(blake3(f"{seed}/{i}".encode()).digest(length=min(64 * MiB, size - off)))


def _data_ranges(fd: int, size: int):
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _warm(path) -> None:
    """Reads the file's data through once, so that it is (still) in page cache."""
    buf = memoryview(bytearray(4 * MiB))
    fd = os.open(path, os.O_RDONLY)
    try:
        for start, end in _data_ranges(fd, os.fstat(fd).st_size):
            for off in range(start, end, len(buf)):
                os.preadv(fd, [buf[:min(len(buf), end - off)]], off)
    finally:
        os.close(fd)


def _prepare(src, *stale, out: int = 0) -> None:
    """Before a timed run: delete the previous outputs, sync, read the source through, then
    (out > 0) write and delete an `out`-byte scratch file from each CPU. The last step puts
    on every CPU's free lists memory that was just in use. Without it, times here swing 2-10x
    with how long ago the memory a run allocates was last touched (the host reclaims guest
    memory left idle for a few seconds; a run right after a slow step paid for it), which made
    whichever run followed the 5 s cp+sha256sum anchor look slow."""
    for p in stale:
        for q in (p, str(p) + ".partial"):
            if os.path.exists(q):
                os.unlink(q)
    os.sync()
    _warm(src)
    if out:
        scratch = pathlib.Path(src).parent

        def fill(cpu: int) -> None:
            os.sched_setaffinity(0, {cpu})  # this thread only
            path = scratch / f"scratch.{cpu}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for off in range(0, out, len(_ONES)):
                    os.write(fd, _ONES[:min(len(_ONES), out - off)])
            finally:
                os.close(fd)
                os.unlink(path)
        threads = [threading.Thread(target=fill, args=(cpu,)) for cpu in sorted(os.sched_getaffinity(0))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


_ONES = b"\1" * (4 * MiB)


def _cpu_counters() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this process and its children)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    own = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for a in ("ru_utime", "ru_stime"))
    return busy, own


def _timed(name: str, fn) -> float:
    """Runs fn, keeps its wall time under name, and the share of the machine's CPUs that
    other processes used meanwhile (under "others")."""
    busy0, own0 = _cpu_counters()
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    busy1, own1 = _cpu_counters()
    _TIMES.setdefault(name, []).append(t)
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t * (os.cpu_count() or 1))
    _TIMES.setdefault("others", []).append(min(1.0, others))
    return t


def _others() -> str:
    xs = _TIMES.get("others", [])
    return f"other processes used {100 * median(xs):.0f}% of the CPUs (median over timed runs)" if xs else ""


def _list(name: str) -> list[float]:
    return [round(x, 3) for x in _TIMES[name]]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def _goal(ok: bool, text: str) -> str:
    return text + (" (met)" if ok else " (MISSED)")


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("copy")
    src = d / "big.src"
    _write_random(src, BIG, 1)
    os.sync()
    _warm(src)
    yield d, src
    os.unlink(src)  # pytest keeps the last few tmp directories: not 1 GiB each


def _make_sparse(path, shifted: bool) -> None:
    """4 GiB with 50 extents of 4 MiB in randomly chosen chunk slots (every other slot, so
    they never touch); shifted: each moved by a random multiple of 64 KiB, so it straddles
    two chunks (100 chunks partly data, hashed whole), else chunk-aligned."""
    rng = random.Random(7)
    slots = sorted(rng.sample(range(0, SPARSE // CHUNK - 1, 2), EXTENTS))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, SPARSE)
        for i, slot in enumerate(slots):
            off = slot * CHUNK + (rng.randrange(1, 64) * (64 << 10) if shifted else 0)
            os.pwrite(fd, blake3(f"sparse/{i}".encode()).digest(length=CHUNK), off)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    """The two sparse layouts and a plain 200 MiB file for the anchor."""
    d = tmp_path_factory.mktemp("sparse")
    files = {"aligned": d / "aligned.src", "shifted": d / "shifted.src"}
    for name, path in files.items():
        _make_sparse(path, name == "shifted")
    plain = d / "plain.src"
    _write_random(plain, EXTENTS * CHUNK, 2)
    os.sync()
    for path in (*files.values(), plain):
        _warm(path)
    yield d, files, plain
    for path in (*files.values(), plain):
        os.unlink(path)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_python_twin_1gib(benchmark, big):
    d, src = big
    dst = d / "twin.dst"

    def setup():
        _prepare(src, dst, out=BIG)
        return (), {}

    def target():
        _timed("twin", lambda: copysum_py.copy_file(src, dst))
    benchmark.pedantic(target, setup=setup, rounds=1, iterations=1)
    os.unlink(dst)


@pytest.mark.benchmark(group=GROUP)
def test_copy_1gib_with_digest(benchmark, big, report):
    """copy_file beside `dd bs=4M` and `cp` + `sha256sum`, interleaved round by round."""
    if _copysum is None:
        pytest.fail("the Cython extension is not built (pip install -e .)", pytrace=False)
    d, src = big
    dst, dd_dst, cp_dst = d / "copy.dst", d / "dd.dst", d / "cp.dst"
    results = []
    _TIMES["others"] = []

    anchors = [("dd", lambda: _run("dd", f"if={src}", f"of={dd_dst}", "bs=4M", "status=none")),
               ("cp+sha256sum", lambda: (_run("cp", str(src), str(cp_dst)), _run("sha256sum", str(cp_dst))))]

    def setup():  # the anchors, in turns first and second, then the target
        anchors.reverse()
        for name, fn in anchors:
            _prepare(src, dst, dd_dst, cp_dst, out=BIG)
            _timed(name, fn)
        _prepare(src, dst, dd_dst, cp_dst, out=BIG)
        return (), {}

    def target():
        _timed("copy", lambda: results.append(_copysum.copy_file(src, dst)))
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1)
    _prepare(src, dst)

    want = copysum_py.digest_file(src)
    assert all(r.digest == want.digest for r in results)
    c, dd, cs = median(_TIMES["copy"]), median(_TIMES["dd"]), median(_TIMES["cp+sha256sum"])
    print(f"\n[bench] copy {_list('copy')} dd {_list('dd')} cp+sha256sum {_list('cp+sha256sum')}; "
          f"{_others()}", file=sys.stderr)
    what = f"copy_file 1 GiB (page cache) with BLAKE3 digest, median of {ROUNDS}"
    report.row(what, _s(c), f"dd bs=4M copy alone {_s(dd)}", f"{c / dd:.2f}x",
               _goal(c <= 1.25 * dd, "<= 1.25x dd"))
    report.row(what, _s(c), f"cp then sha256sum {_s(cs)}", f"{c / cs:.2f}x", _goal(c < cs, "< cp+sha256sum"))
    if "twin" in _TIMES:
        t = _TIMES["twin"][0]
        report.row(what, _s(c), f"pure-Python twin (1 round) {_s(t)}", f"{t / c:.1f}x faster", "(for comparison)")
    report.row("  (load from other processes during those runs)", _others().split(" (")[0], "", "", "")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("layout", ["aligned", "shifted"])
def test_copy_sparse_4gib_holding_200mib(benchmark, sparse, report, layout):
    """copy_file of the sparse file beside dd of a plain file of its data's size."""
    if _copysum is None:
        pytest.fail("the Cython extension is not built (pip install -e .)", pytrace=False)
    d, files, plain = sparse
    src = files[layout]
    dst, dd_dst = d / "copy.dst", d / "dd.dst"
    results = []
    _TIMES["others"] = []
    key, anchor = f"sparse-{layout}", f"dd-200-{layout}"

    def setup():
        _prepare(plain, dst, dd_dst, out=EXTENTS * CHUNK)
        _timed(anchor, lambda: _run("dd", f"if={plain}", f"of={dd_dst}", "bs=4M", "status=none"))
        _prepare(src, dst, dd_dst, out=EXTENTS * CHUNK)
        return (), {}

    def target():
        _timed(key, lambda: results.append(_copysum.copy_file(src, dst)))
    benchmark.pedantic(target, setup=setup, rounds=ROUNDS, iterations=1)

    os.sync()
    got, orig = _allocated(dst), _allocated(src)
    r = results[-1]
    assert all(x.digest == r.digest for x in results)
    assert r.digest == copysum_py.digest_file(src).digest
    _prepare(src, dst)
    c, dd = median(_TIMES[key]), median(_TIMES[anchor])
    print(f"\n[bench] sparse ({layout}) copy {_list(key)} dd-200 {_list(anchor)}; read "
          f"{r.data_bytes / MiB:.0f} MiB, wrote {r.written_bytes / MiB:.0f} MiB; {_others()}", file=sys.stderr)
    what = (f"copy_file 4 GiB sparse, {EXTENTS} x 4 MiB of data "
            f"({'chunk-aligned' if layout == 'aligned' else 'each straddling two chunks'}), median of {ROUNDS}")
    report.row(what, _s(c), f"dd bs=4M of a plain {EXTENTS * CHUNK // MiB} MiB file {_s(dd)}", f"{c / dd:.2f}x",
               _goal(c <= 2 * dd, "<= 2x"))
    report.row("  allocated bytes of that copy", f"{got / MiB:.1f} MiB", f"original {orig / MiB:.1f} MiB",
               f"{got / orig:.3f}x", _goal(got <= orig, "as sparse as the original (<= 1x)"))
    report.row("  (load from other processes during those runs)", _others().split(" (")[0], "", "", "")
