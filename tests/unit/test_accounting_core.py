"""The accounting core: the Cython extension and its pure-Python twin on hand-checked cases,
exactly equal to each other on random data, the NumPy vectorised version close to both, and
feeding a batch in pieces equal to feeding it at once."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from tests.unit import twins
from vws.native import accounting_numpy, accounting_py
from vws.native.accounting_py import FIELDS, FLOAT_FIELDS, Accumulators

try:
    from vws.native import _accounting
except ImportError:  # pragma: no cover - not built
    _accounting = None

needs_ext = pytest.mark.requires(_accounting is None, "Cython extension not built (pip install -e .)")
IMPLS = [pytest.param(_accounting, id="cython", marks=needs_ext), pytest.param(accounting_py, id="python")]
EXACT = [pytest.param(m, id=i, marks=k) for m, i, k in
         ((_accounting, "cython", [needs_ext]), (accounting_py, "python", []))]
ALL = EXACT + [pytest.param(accounting_numpy, id="numpy")]
GB = 1 << 30


def feed(impl, acc, rows):
    """rows: (ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx) per sample."""
    cols = list(zip(*rows)) if rows else [[]] * 10
    impl.accumulate(acc, *(np.array(c, dtype=np.float64 if i == 1 else np.int64) for i, c in enumerate(cols)))


def row(ws, t, cpu=0, thr=0, mem=0, lim=0, oom=0, disk=0, rx=0, tx=0):
    return (ws, t, cpu, thr, mem, lim, oom, disk, rx, tx)


# ---- hand-checked cases, on every implementation ----

@pytest.mark.parametrize("impl", ALL)
def test_first_sample_sets_state_without_deltas(impl):
    acc = Accumulators(3)
    feed(impl, acc, [row(1, 100.0, cpu=5_000_000_000, thr=7, mem=GB, lim=2 * GB, oom=2, disk=99, rx=10, tx=20)])
    assert acc.samples.tolist() == [0, 1, 0]
    assert acc.first_time[1] == acc.last_time[1] == 100.0
    assert acc.cpu_seconds[1] == 0.0 and acc.seconds_at_cpu_limit[1] == 0.0
    assert acc.memory_byte_seconds[1] == 0.0 and acc.seconds_at_memory_limit[1] == 0.0
    assert acc.oom_kills[1] == acc.net_rx[1] == acc.net_tx[1] == 0
    assert acc.memory_peak[1] == acc.memory_last[1] == GB and acc.disk_last[1] == 99
    assert (acc.last_cpu_ns[1], acc.last_throttled_ns[1], acc.last_oom[1], acc.last_rx[1], acc.last_tx[1]) \
        == (5_000_000_000, 7, 2, 10, 20)
    assert not any(getattr(acc, f)[0] or getattr(acc, f)[2] for f in FIELDS)  # others untouched


@pytest.mark.parametrize("impl", ALL)
def test_deltas_and_memory_integral(impl):
    acc = Accumulators(1)
    feed(impl, acc, [
        row(0, 10.0, cpu=1_000_000_000, mem=100, disk=5, rx=1000, tx=10),
        row(0, 20.0, cpu=3_500_000_000, mem=300, disk=7, rx=1500, tx=40),
        row(0, 25.0, cpu=4_000_000_000, mem=200, disk=6, rx=1600, tx=40),
    ])
    assert acc.cpu_seconds[0] == pytest.approx(3.0)
    assert acc.memory_byte_seconds[0] == (100 + 300) / 2 * 10 + (300 + 200) / 2 * 5  # 2000 + 1250
    assert acc.memory_peak[0] == 300 and acc.memory_last[0] == 200 and acc.disk_last[0] == 6
    assert acc.net_rx[0] == 600 and acc.net_tx[0] == 30
    assert acc.samples[0] == 3 and acc.first_time[0] == 10.0 and acc.last_time[0] == 25.0


@pytest.mark.parametrize("impl", ALL)
def test_counter_reset_counts_everything_after_restart(impl):
    """The workspace restarted between samples 2 and 3: its counters start again from zero,
    so what they show at sample 3 is all new (not a negative delta, not lost)."""
    acc = Accumulators(1)
    feed(impl, acc, [
        row(0, 0.0, cpu=10_000_000_000, oom=3, rx=5000, tx=700),
        row(0, 10.0, cpu=12_000_000_000, oom=4, rx=6000, tx=900),
        row(0, 20.0, cpu=1_500_000_000, oom=1, rx=250, tx=50),   # reset
        row(0, 30.0, cpu=2_000_000_000, oom=1, rx=300, tx=60),
    ])
    assert acc.cpu_seconds[0] == pytest.approx(2.0 + 1.5 + 0.5)
    assert acc.oom_kills[0] == 1 + 1 + 0
    assert acc.net_rx[0] == 1000 + 250 + 50
    assert acc.net_tx[0] == 200 + 50 + 10
    assert acc.last_cpu_ns[0] == 2_000_000_000


@pytest.mark.parametrize("impl", ALL)
def test_reset_to_equal_value_is_no_reset(impl):
    acc = Accumulators(1)
    feed(impl, acc, [row(0, 0.0, cpu=5), row(0, 1.0, cpu=5), row(0, 2.0, cpu=4)])
    assert acc.cpu_seconds[0] == 4 / 1e9  # 0, then reset to 4


@pytest.mark.parametrize("impl", ALL)
def test_memory_at_limit(impl):
    """dt counts at the limit when the sample's memory is >= 99% of a set limit."""
    acc = Accumulators(1)
    lim = 1000
    feed(impl, acc, [
        row(0, 0.0, mem=999, lim=lim),
        row(0, 1.0, mem=989, lim=lim),    # 98.9%: no
        row(0, 3.0, mem=990, lim=lim),    # exactly 99%: yes, 2 s
        row(0, 7.0, mem=1000, lim=lim),   # 100%: 4 s
        row(0, 8.0, mem=2000, lim=0),     # no limit: no
        row(0, 16.0, mem=1500, lim=lim),  # over: 8 s
    ])
    assert acc.seconds_at_memory_limit[0] == 14.0
    assert acc.memory_peak[0] == 2000


@pytest.mark.parametrize("impl", ALL)
def test_memory_limit_test_is_exact_for_big_values(impl):
    lim = 10 ** 15 + 1  # 99% = 990000000000000.99 -> the first byte at the limit is ...991
    acc = Accumulators(2)
    feed(impl, acc, [row(0, 0.0, mem=1, lim=lim), row(0, 1.0, mem=990_000_000_000_000, lim=lim),
                     row(1, 0.0, mem=1, lim=lim), row(1, 1.0, mem=990_000_000_000_001, lim=lim)])
    assert acc.seconds_at_memory_limit.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("impl", ALL)
def test_throttling_is_capped_at_the_interval(impl):
    acc = Accumulators(1)
    feed(impl, acc, [
        row(0, 0.0, thr=0),
        row(0, 10.0, thr=4_000_000_000),    # 4 s throttled of 10
        row(0, 12.0, thr=9_000_000_000),    # 5 s in a 2 s interval (several CPUs): capped at 2
        row(0, 15.0, thr=1_000_000_000),    # reset: 1 s
    ])
    assert acc.seconds_at_cpu_limit[0] == 4.0 + 2.0 + 1.0


@pytest.mark.parametrize("impl", ALL)
def test_interleaved_workspaces(impl):
    acc = Accumulators(2)
    feed(impl, acc, [row(0, 0.0, cpu=0), row(1, 0.5, cpu=100), row(0, 1.0, cpu=2_000_000_000),
                     row(1, 1.5, cpu=1_000_000_100), row(0, 2.0, cpu=3_000_000_000)])
    assert acc.cpu_seconds.tolist() == [3.0, 1.0]
    assert acc.samples.tolist() == [3, 2]
    assert acc.first_time.tolist() == [0.0, 0.5] and acc.last_time.tolist() == [2.0, 1.5]


@pytest.mark.parametrize("impl", ALL)
def test_empty_batch_and_bad_input(impl):
    acc = Accumulators(2)
    feed(impl, acc, [])
    assert acc == Accumulators(2)
    with pytest.raises(IndexError):
        feed(impl, acc, [row(0, 0.0, cpu=1), row(2, 0.0)])
    with pytest.raises(IndexError):
        feed(impl, acc, [row(-1, 0.0)])
    assert acc == Accumulators(2)  # refused before touching state
    with pytest.raises(ValueError):
        impl.accumulate(acc, [0], [0.0], [1, 2], [0], [0], [0], [0], [0], [0], [0])


@pytest.mark.parametrize("impl", EXACT)
def test_accepts_lists_and_other_dtypes(impl):
    a, b = Accumulators(2), Accumulators(2)
    impl.accumulate(a, [0, 1, 0], [0, 1, 2], [0, 5, 10], [0] * 3, [1, 2, 3], [0] * 3, [0] * 3, [0] * 3, [0] * 3, [0] * 3)
    feed(impl, b, [row(0, 0.0, cpu=0, mem=1), row(1, 1.0, cpu=5, mem=2), row(0, 2.0, cpu=10, mem=3)])
    assert a == b


# ---- random comparisons ----

def random_batch(rng, n, per_ws, reset_p=0.02):
    """per_ws samples for each of n workspaces, in time order per workspace, interleaved at
    random across workspaces; cumulative counters grow, and restart from a small value when
    the workspace restarts (probability reset_p per sample)."""
    k = n * per_ws
    ws = np.repeat(np.arange(n, dtype=np.int64), per_ws)
    t = np.tile(np.arange(per_ws, dtype=np.float64), n) * 10.0 + rng.random(k) * 9.0

    def counter(step):
        inc, reset, out, v = rng.integers(0, step, k).tolist(), (rng.random(k) < reset_p).tolist(), [], 0
        for j in range(k):
            v = inc[j] if reset[j] or j % per_ws == 0 else v + inc[j]
            out.append(v)
        return np.array(out, dtype=np.int64)
    cpu, thr = counter(20_000_000_000), counter(15_000_000_000)
    oom, rx, tx = counter(2), counter(10 ** 7), counter(10 ** 6)
    lim = np.where(rng.random(k) < 0.7, 4 * GB, 0).astype(np.int64)
    mem = np.where(rng.random(k) < 0.2, 4 * GB - rng.integers(0, 60 << 20, k), rng.integers(0, 4 * GB, k))
    disk = rng.integers(0, 10 * GB, k)
    # a random interleaving that keeps each workspace's samples in order: shuffle the slots,
    # then give each workspace's slots to its samples in time order
    slots_ws = ws[rng.permutation(k)]
    order = np.empty(k, dtype=np.int64)
    for w in range(n):
        order[slots_ws == w] = np.arange(w * per_ws, (w + 1) * per_ws)
    return [c[order] for c in (ws, t, cpu, thr, mem, lim, oom, disk, rx, tx)]


def run(impl, n, cols, pieces=1):
    acc = Accumulators(n)
    k = len(cols[0])
    cuts = np.linspace(0, k, pieces + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        impl.accumulate(acc, *(c[a:b] for c in cols))
    return acc


@pytest.mark.parametrize("seed", range(6))
@needs_ext
def test_random_cython_equals_twin_exactly(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    cols = random_batch(rng, n, int(rng.integers(1, 200)))
    c, p = run(_accounting, n, cols), run(accounting_py, n, cols)
    for f in FIELDS:
        assert np.array_equal(getattr(c, f), getattr(p, f)), f
    assert c.cpu_seconds.sum() > 0 and c.seconds_at_memory_limit.sum() > 0 and c.seconds_at_cpu_limit.sum() > 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("impl", EXACT)
def test_random_numpy_is_close(impl, seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 60))
    cols = random_batch(rng, n, int(rng.integers(1, 200)))
    ref, vec = run(impl, n, cols), run(accounting_numpy, n, cols)
    for f in FIELDS:
        x, y = getattr(ref, f), getattr(vec, f)
        if f in FLOAT_FIELDS:
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=0, err_msg=f)
        else:
            assert np.array_equal(x, y), f


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("pieces", [2, 7, 50])
def test_pieces_equal_whole(impl, pieces):
    """Feeding a batch in pieces (state carried in the accumulators) equals feeding it at once:
    exactly for the twin and the extension (same operations in the same order), to rounding
    for the NumPy version (whose per-batch sums are grouped differently)."""
    rng = np.random.default_rng(pieces)
    cols = random_batch(rng, 23, 40)
    whole, split = run(impl, 23, cols), run(impl, 23, cols, pieces)
    for f in FIELDS:
        x, y = getattr(whole, f), getattr(split, f)
        if impl is accounting_numpy and f in FLOAT_FIELDS:
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=0, err_msg=f)
        else:
            assert np.array_equal(x, y), f


@needs_ext
def test_the_hot_loop_is_declared_without_the_gil():
    """Whether the loop really lets other threads run is a matter of timing, measured in
    bench/; here, that the loop is written to release it."""
    import pathlib
    source = (pathlib.Path(_accounting.__file__).parent / "_accounting.pyx").read_text()
    assert "with nogil:" in source


# ---- the public module ----

def test_public_module_prefers_the_extension():
    from vws.native import accounting
    want = twins.expected(_accounting)
    assert accounting.IMPLEMENTATION == want
    assert accounting.accumulate is (_accounting.accumulate if want == "cython" else accounting_py.accumulate)
    assert accounting.Accumulators is Accumulators
    importlib.reload(accounting)


def test_no_extensions_switch_forces_the_twin():
    assert twins.chosen_with_no_extensions("accounting", "accumulate") == ["python", "vws.native.accounting_py"]
