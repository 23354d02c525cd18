"""The accounting core on 10 million samples over 10,000 workspaces: the Cython extension
beside a NumPy vectorised implementation of the same arithmetic (goal: >= 2x) and beside its
pure-Python twin (goal: >= 50x). The twin is measured on the first 1,000,000 samples and
scaled linearly to 10 million (it is one Python loop, so its cost per sample is flat)."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from bench.conftest import median
from vws.native import accounting_numpy, accounting_py
from vws.native.accounting_py import FIELDS, FLOAT_FIELDS, Accumulators

try:
    from vws.native import _accounting
except ImportError:  # pragma: no cover
    _accounting = None

WORKSPACES = 10_000
PER_WS = 1_000
SAMPLES = WORKSPACES * PER_WS  # 10,000,000
TWIN_SAMPLES = 1_000_000
ROUNDS = 5
GROUP = "accounting-core"
GB = 1 << 30


@pytest.fixture(scope="module")
def batch():
    """One sample per workspace every 10 s (plus jitter), round after round, so workspaces
    interleave; cumulative counters with about 1 restart per 500 samples."""
    rng = np.random.default_rng(42)
    shape = (PER_WS, WORKSPACES)  # row = round, column = workspace

    def counter(step, reset_p=0.002):
        inc = rng.integers(0, step, shape)
        cum = np.cumsum(inc, axis=0)
        reset = rng.random(shape) < reset_p
        base = np.maximum.accumulate(np.where(reset, cum - inc, 0), axis=0)
        return (cum - base).ravel()  # restarts from inc at each reset
    ws = np.tile(np.arange(WORKSPACES, dtype=np.int64), PER_WS)
    t = (np.repeat(np.arange(PER_WS, dtype=np.float64) * 10.0, WORKSPACES) + rng.random(SAMPLES))
    cpu, thr = counter(20_000_000_000), counter(5_000_000_000)
    oom, rx, tx = counter(2, 0.0005), counter(10 ** 7), counter(10 ** 6)
    lim = np.where(np.arange(SAMPLES) % 3 == 0, 0, 4 * GB).astype(np.int64)
    mem = rng.integers(GB, 4 * GB + 1, SAMPLES)
    disk = rng.integers(0, 10 * GB, SAMPLES)
    return [ws, t, cpu, thr, mem, lim, oom, disk, rx, tx]


_TIMES: dict[str, float] = {}
_RESULTS: dict[str, Accumulators] = {}


def _measure(benchmark, name, impl, cols, rounds):
    seconds = []

    def setup():
        return (Accumulators(WORKSPACES),), {}

    def target(acc):
        t0 = time.perf_counter()
        impl.accumulate(acc, *cols)
        seconds.append(time.perf_counter() - t0)
        _RESULTS[name] = acc
    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1)
    _TIMES[name] = median(seconds)


def _ns(seconds, samples=SAMPLES):
    return f"{seconds / samples * 1e9:.1f} ns/sample"


@pytest.mark.benchmark(group=GROUP)
def test_anchor_numpy_vectorised(benchmark, batch):
    _measure(benchmark, "numpy", accounting_numpy, batch, 3)


@pytest.mark.benchmark(group=GROUP)
def test_anchor_python_twin_1m(benchmark, batch, capsys):
    """The twin on the first 1M samples (100 rounds of all 10,000 workspaces), fed in ten
    pieces so progress shows (on stderr, past pytest's capture); pieces give the same result
    as one batch."""
    cols = [c[:TWIN_SAMPLES] for c in batch]
    step = TWIN_SAMPLES // 10
    seconds = []

    def target():
        acc = Accumulators(WORKSPACES)
        t0 = time.perf_counter()
        for part in range(10):
            accounting_py.accumulate(acc, *(c[part * step:(part + 1) * step] for c in cols))
            done = time.perf_counter() - t0
            with capsys.disabled():
                print(f"[bench] python twin {(part + 1) * 10:3d}% of {TWIN_SAMPLES:,} samples, {done:.1f}s",
                      file=sys.stderr, flush=True)
        seconds.append(time.perf_counter() - t0)
        _RESULTS["python-1m"] = acc
    benchmark.pedantic(target, rounds=1, iterations=1)
    _TIMES["python-1m"] = median(seconds)


@pytest.mark.benchmark(group=GROUP)
def test_cython(benchmark, batch, report):
    if _accounting is None:
        pytest.fail("the Cython extension is not built (pip install -e .)", pytrace=False)
    _measure(benchmark, "cython", _accounting, batch, ROUNDS)
    c = _TIMES["cython"]

    # Same results: the twin bit for bit on its 1M, NumPy to rounding on the 10M.
    if "python-1m" in _RESULTS:
        acc = Accumulators(WORKSPACES)
        _accounting.accumulate(acc, *(x[:TWIN_SAMPLES] for x in batch))
        assert acc == _RESULTS["python-1m"]
    if "numpy" in _RESULTS:
        for f in FIELDS:
            x, y = getattr(_RESULTS["cython"], f), getattr(_RESULTS["numpy"], f)
            assert (np.allclose(x, y, rtol=1e-9, atol=0) if f in FLOAT_FIELDS else np.array_equal(x, y)), f

    what = f"accounting core (Cython), {SAMPLES:,} samples / {WORKSPACES:,} workspaces, median of {ROUNDS}"
    measured = f"{c * 1000:.0f} ms ({_ns(c)})"
    if "numpy" in _TIMES:
        n = _TIMES["numpy"]
        report.row(what, measured, f"NumPy vectorised {n * 1000:.0f} ms ({_ns(n)})", f"{n / c:.1f}x",
                   ">= 2x" + (" (met)" if n / c >= 2 else " (MISSED)"))
    if "python-1m" in _TIMES:
        p1 = _TIMES["python-1m"]
        p = p1 * SAMPLES / TWIN_SAMPLES
        report.row(what, measured, f"pure-Python twin {p:.1f} s ({_ns(p1, TWIN_SAMPLES)}; measured on "
                   f"{TWIN_SAMPLES:,} samples in {p1:.1f} s, scaled x{SAMPLES // TWIN_SAMPLES})",
                   f"{p / c:.0f}x", ">= 50x" + (" (met)" if p / c >= 50 else " (MISSED)"))
