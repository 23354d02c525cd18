"""The FFT benchmark harness (vws.native fft, issue 7): the C kernel against numpy.fft at
every size, the timing method driven by a fake clock over both implementations (identical
results), and the size checks. No timing assertions."""
from __future__ import annotations

import importlib
import math
import threading

import numpy as np
import pytest

from tests.unit import twins
from vws.native import fft, fft_py
from vws.native.fft_py import MAX_REL_ERROR, FFTResult

try:
    from vws.native import _fft
except ImportError:  # pragma: no cover - not built
    _fft = None

needs_ext = pytest.mark.requires(_fft is None, "Cython extension not built (pip install -e .)")
IMPLS = [pytest.param(_fft, id="cython", marks=needs_ext), pytest.param(fft_py, id="python")]
LOG2S = range(6, 23)


@pytest.mark.parametrize("log2n", LOG2S, ids=lambda k: f"2^{k}")
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_numpy_at_every_size(impl, log2n):
    n = 1 << log2n
    x = fft_py.harness_input(n)
    keep = x.copy()
    y = impl.fft(x)
    assert y.dtype == np.complex128 and y.shape == (n,)
    assert fft_py.rel_error(y, np.fft.fft(x)) <= MAX_REL_ERROR
    assert np.array_equal(x, keep)  # out of place leaves the input alone


@needs_ext
@pytest.mark.parametrize("log2n", [6, 7, 10, 13, 16], ids=lambda k: f"2^{k}")
def test_in_place_and_out_of_place_agree(log2n):
    """In place needs a copy first when the pass count is odd (log2 n in 1,2 mod 4)."""
    n = 1 << log2n
    x = fft_py.harness_input(n)
    plan = _fft.Plan(n)
    out = np.empty(n, dtype=np.complex128)
    assert plan.execute(x, out) is out
    z = x.copy()
    assert plan.execute(z, z) is z
    assert np.array_equal(z, out)
    assert fft_py.rel_error(out, np.fft.fft(x)) <= MAX_REL_ERROR


@needs_ext
def test_known_transforms():
    n = 64
    impulse = np.zeros(n, complex)
    impulse[0] = 1
    assert np.allclose(_fft.fft(impulse), np.ones(n), atol=1e-15)
    k = 5
    tone = np.exp(2j * np.pi * k * np.arange(n) / n)
    want = np.zeros(n, complex)
    want[k] = n
    assert np.allclose(_fft.fft(tone), want, atol=1e-12)
    # real or other-dtype input is converted, like numpy.fft.fft does
    r = np.arange(n, dtype=np.float32)  # converted to complex128 (numpy.fft would stay in float32)
    assert fft_py.rel_error(_fft.fft(r), np.fft.fft(r.astype(np.float64))) <= MAX_REL_ERROR
    assert fft_py.rel_error(_fft.fft(list(range(n))), np.fft.fft(np.arange(n))) <= MAX_REL_ERROR


@needs_ext
def test_threads_sharing_a_plan():
    n = 1 << 12
    xs = [fft_py.harness_input(n) * (i + 1) for i in range(4)]
    got = [None] * 4

    def work(i):
        for _ in range(50):
            got[i] = _fft.fft(xs[i])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x, y in zip(xs, got):
        assert fft_py.rel_error(y, np.fft.fft(x)) <= MAX_REL_ERROR


class FakeClock:
    """Each run reads the clock twice (start, stop); the stop read of run i returns the
    start plus durations[i]. Counts its reads."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.reads = 0
        self.t = 1000.0

    def __call__(self):
        if self.reads % 2:
            self.t += self.durations[self.reads // 2]
        self.reads += 1
        return self.t


# Calibration at 1, 2, 4, 8, 16 iterations (the last reaches min_time = 0.1), then 5 repeats.
CALIBRATION = [0.01, 0.02, 0.04, 0.08, 0.16]
REPEATS = [0.17, 0.16, 0.2, 0.165, 0.18]


@pytest.mark.parametrize("impl", IMPLS)
def test_timing_method_with_a_fake_clock(impl):
    n = 256
    clock = FakeClock(CALIBRATION + REPEATS)
    r = impl.time_transform(n, min_time=0.1, repeats=5, clock=clock)
    assert isinstance(r, FFTResult)
    assert clock.reads == 2 * (len(CALIBRATION) + len(REPEATS))
    assert r.n == n
    assert r.iterations == 16
    assert r.times == pytest.approx(tuple(REPEATS), rel=1e-9)  # the calibration runs are not repeats
    assert r.seconds_per_transform == pytest.approx(0.16 / 16, rel=1e-9)
    # 5 N log2 N / (time per transform in microseconds)
    assert r.mflops == pytest.approx(5 * 256 * 8 / (0.16 / 16 * 1e6), rel=1e-9)
    assert r.spread == pytest.approx((0.2 - 0.16) / 0.16, rel=1e-9)
    assert 0 <= r.max_rel_error <= MAX_REL_ERROR
    assert r.implementation == ("cython" if impl is _fft else "python")
    assert r.as_dict()["times"] == list(r.times)


@needs_ext
@pytest.mark.parametrize("durations,min_time,repeats", [
    (CALIBRATION + REPEATS, 0.1, 5),
    ([0.5, 0.3], 0.2, 1),  # the first run is long enough: 1 iteration, 1 repeat
    ([0.001 * 2 ** k for k in range(8)] + [0.2, 0.1, 0.3], 0.1, 3),  # 128 iterations
    ([0.05, 0.1, 0.1, 0.1], 0.1, 2),  # exactly min_time ends the calibration
])
def test_both_implementations_agree_under_a_fake_clock(durations, min_time, repeats):
    results = []
    for impl in (_fft, fft_py):
        clock = FakeClock(durations)
        results.append(impl.time_transform(64, min_time=min_time, repeats=repeats, clock=clock).as_dict())
        assert clock.reads == 2 * len(durations)
    c, p = results
    for d in results:
        del d["implementation"], d["max_rel_error"]
    assert c == p


def test_exactly_min_time_and_the_mflops_formula():
    r = fft_py.time_transform(64, min_time=0.1, repeats=2, clock=FakeClock([0.05, 0.1, 0.1, 0.1]))
    assert r.iterations == 2 and r.spread == 0
    assert fft_py.mflops(1 << 16, 1e-3) == pytest.approx(5 * 65536 * 16 / 1000)


@pytest.mark.parametrize("impl", IMPLS)
def test_real_clock_runs(impl):
    r = impl.time_transform(64, min_time=0.001, repeats=2)
    assert r.iterations >= 1 and len(r.times) == 2 and r.mflops > 0 and r.spread >= 0
    assert min(r.times) / r.iterations == r.seconds_per_transform


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [0, 1, 2, 32, 63, 65, 100, -64, 3 << 10, 1 << 23, 1 << 30])
def test_bad_sizes_refused(impl, bad):
    calls = [lambda: impl.time_transform(bad)] + ([lambda: impl.fft(np.zeros(bad, complex))] if bad >= 0 else [])
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        assert f"FFT size {bad} " in msg and "2^6 = 64" in msg and "2^22 = 4194304" in msg
        assert ("not a power of two" if bad < 1 or bad & (bad - 1) else "out of range") in msg


@pytest.mark.parametrize("impl", IMPLS)
def test_other_bad_arguments(impl):
    for bad in (64.0, "64", True, None):
        with pytest.raises(ValueError, match="is not an integer"):
            impl.time_transform(bad)
    assert impl.time_transform(np.int64(64), min_time=1e-4, repeats=1).n == 64
    with pytest.raises(ValueError, match="one-dimensional"):
        impl.fft(np.zeros((8, 8), complex))
    with pytest.raises(ValueError, match="min_time"):
        impl.time_transform(64, min_time=0)
    with pytest.raises(ValueError, match="repeats"):
        impl.time_transform(64, repeats=0)


@needs_ext
def test_plan_checks_its_arrays():
    plan = _fft.Plan(64)
    with pytest.raises(ValueError, match="plan of size 64"):
        plan.execute(np.zeros(128, complex))
    for out in (np.zeros(128, complex), np.zeros(64, np.float64), np.zeros(128, complex)[::2]):
        with pytest.raises(ValueError, match="out must be"):
            plan.execute(np.zeros(64, complex), out)
    with pytest.raises(ValueError, match="FFT size 100"):
        _fft.Plan(100)


def test_accuracy_error(monkeypatch):
    monkeypatch.setattr(fft_py, "fft", lambda x: np.fft.fft(x) * (1 + 1e-9))
    with pytest.raises(fft_py.AccuracyError, match="size 64.*exceeds 1e-10"):
        fft_py.time_transform(64, min_time=1e-4, repeats=1)


def test_public_module_chooses_an_implementation():
    want = twins.expected(_fft)
    assert fft.IMPLEMENTATION == want
    impl = _fft if want == "cython" else fft_py
    assert fft.fft is impl.fft and fft.time_transform is impl.time_transform
    assert fft.FFTResult is FFTResult and fft.MAX_REL_ERROR == 1e-10
    assert (fft.MIN_SIZE, fft.MAX_SIZE) == (64, 1 << 22)
    importlib.reload(fft)


def test_no_extensions_forces_the_twin():
    assert twins.chosen_with_no_extensions("fft", "time_transform") == ["python", "vws.native.fft_py"]


def test_result_is_plain_data():
    r = fft_py.time_transform(128, min_time=1e-4, repeats=3)
    d = r.as_dict()
    assert set(d) == {"n", "iterations", "seconds_per_transform", "mflops", "spread", "max_rel_error",
                      "times", "implementation"}
    assert math.isfinite(d["mflops"])
