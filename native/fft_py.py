"""Pure-Python twin of `_fft`: the FFT benchmark harness (issue 7) with numpy.fft as its
transform. Same API, same result fields and the same timing method as the Cython
extension, which reuses the harness logic defined here (sizes, input, error check, the
doubling / minimum / MFLOPS rules in `measure`); only the transform and its timed loop
differ (there: the C kernel fft_kernel.c, looped without the GIL between two C clock reads).

The timing method, benchFFT's:

1. Calibration: time one run of `iterations` back-to-back transforms (same input, out of
   place), starting at iterations = 1 and doubling until one run lasts at least min_time
   seconds.
2. Then `repeats` further runs at that iteration count are timed; the calibration runs are
   not among them. The minimum of the repeats is kept:
       seconds_per_transform = min(run times) / iterations
       mflops = 5 N log2(N) / (seconds_per_transform * 1e6)
       spread = (max(run times) - min(run times)) / min(run times)
3. Each run reads the clock exactly twice (before and after), so with an injected clock
   (a callable returning seconds) both implementations read it in the same order, the
   same number of times: a fake clock gives identical results over both.

Correctness: the input is N complex values with standard-normal real and imaginary parts
from numpy's default_rng(N) (the same input for every implementation); the result carries
max_rel_error = max |ours - numpy.fft.fft| / max |numpy.fft.fft| over it, and
time_transform raises AccuracyError when it exceeds MAX_REL_ERROR (1e-10)."""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import numpy as np

MIN_LOG2 = 6
MAX_LOG2 = 22
MIN_SIZE = 1 << MIN_LOG2
MAX_SIZE = 1 << MAX_LOG2
MAX_REL_ERROR = 1e-10
# Calibration gives up past this many iterations per run (a clock that does not advance).
MAX_ITERATIONS = 1 << 40

__all__ = ["MAX_REL_ERROR", "MAX_SIZE", "MIN_SIZE", "AccuracyError", "FFTResult", "check_size", "fft",
           "mflops", "measure", "rel_error", "harness_input", "time_transform"]


class AccuracyError(ArithmeticError):
    """A transform's result differs from numpy.fft.fft by more than MAX_REL_ERROR."""


@dataclasses.dataclass(frozen=True)
class FFTResult:
    n: int
    iterations: int  # transforms per timed run
    seconds_per_transform: float  # the minimum over the repeats
    mflops: float  # 5 N log2 N / (seconds_per_transform in microseconds)
    spread: float  # (max - min) / min of the repeats' run times
    max_rel_error: float  # against numpy.fft.fft on the same input
    times: tuple[float, ...]  # each repeat's run time (seconds, `iterations` transforms)
    implementation: str  # "cython" (the C kernel) or "python" (numpy.fft)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["times"] = list(self.times)
        return d


def check_size(n) -> int:
    """n as an int if it is a power of two within 2^6..2^22, else ValueError naming both."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"FFT size {n!r} is not an integer: sizes are powers of two from "
                         f"2^{MIN_LOG2} = {MIN_SIZE} to 2^{MAX_LOG2} = {MAX_SIZE}")
    n = int(n)
    if not (MIN_SIZE <= n <= MAX_SIZE) or n & (n - 1):
        why = "is not a power of two" if n < 1 or n & (n - 1) else "is out of range"
        raise ValueError(f"FFT size {n} {why}: sizes are powers of two from "
                         f"2^{MIN_LOG2} = {MIN_SIZE} to 2^{MAX_LOG2} = {MAX_SIZE}")
    return n


def as_input(x) -> np.ndarray:
    """x as a contiguous one-dimensional complex128 array of an allowed size."""
    a = np.ascontiguousarray(x, dtype=np.complex128)
    if a.ndim != 1:
        raise ValueError(f"FFT input must be one-dimensional, not of shape {a.shape}")
    check_size(a.shape[0])
    return a


def harness_input(n: int) -> np.ndarray:
    """The harness's input for size n (the same for every implementation)."""
    rng = np.random.default_rng(check_size(n))
    return rng.standard_normal(n) + 1j * rng.standard_normal(n)


def rel_error(ours: np.ndarray, reference: np.ndarray) -> float:
    """max |ours - reference| / max |reference|."""
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def mflops(n: int, seconds_per_transform: float) -> float:
    """benchFFT's nominal rate: 5 N log2 N / (time per transform in microseconds)."""
    return 5 * n * math.log2(n) / (seconds_per_transform * 1e6)


def measure(run: Callable[[int], float], n: int, min_time: float, repeats: int,
            *, max_rel_error: float, implementation: str) -> FFTResult:
    """The timing method (module docstring) over run(iterations) -> seconds of one run."""
    if not min_time > 0:
        raise ValueError(f"min_time must be positive, not {min_time!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats!r}")
    iterations = 1
    while run(iterations) < min_time:
        iterations *= 2
        if iterations > MAX_ITERATIONS:
            raise RuntimeError(f"{iterations} transforms of size {n} took under {min_time} s: "
                               "is the clock advancing?")
    times = tuple(run(iterations) for _ in range(repeats))
    best = min(times)
    per = best / iterations
    return FFTResult(n=n, iterations=iterations, seconds_per_transform=per,
                     mflops=mflops(n, per) if per > 0 else math.inf,
                     spread=(max(times) - best) / best if best > 0 else 0.0,
                     max_rel_error=max_rel_error, times=times, implementation=implementation)


def check_accuracy(n: int, err: float) -> float:
    if not err <= MAX_REL_ERROR:  # also NaN
        raise AccuracyError(f"FFT of size {n}: relative error {err:.3g} against numpy.fft "
                            f"exceeds {MAX_REL_ERROR:g}")
    return err


def fft(x) -> np.ndarray:
    """Forward transform of x (numpy.fft.fft; sizes checked like the C kernel's)."""
    return np.fft.fft(as_input(x))


def time_transform(n: int, min_time: float = 0.1, repeats: int = 5,
                   clock: Callable[[], float] | None = None) -> FFTResult:
    """Times numpy.fft.fft at size n by the harness's method (module docstring); clock
    defaults to time.perf_counter."""
    n = check_size(n)
    x = harness_input(n)
    err = check_accuracy(n, rel_error(fft(x), np.fft.fft(x)))
    now = clock if clock is not None else time.perf_counter
    transform = np.fft.fft

    def run(iterations: int) -> float:
        t0 = now()
        for _ in range(iterations):
            transform(x)
        return now() - t0

    return measure(run, n, min_time, repeats, max_rel_error=err, implementation="python")
