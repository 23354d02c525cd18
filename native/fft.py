"""FFT benchmark harness (issue 7): complex double-precision forward transforms of sizes 2^6
to 2^22, timed the way benchFFT times them and checked against numpy.fft (the method is
defined in fft_py's docstring): time_transform(n, min_time, repeats, clock) -> FFTResult,
fft(x) -> array.

Uses the Cython extension `_fft` (the C kernel fft_kernel.c, timed without the GIL) when it
is built and importable, else the pure-Python twin `fft_py` (same API and timing method,
numpy.fft as its transform). VWS_NO_EXTENSIONS=1 forces the twin. IMPLEMENTATION says which
one was chosen: "cython" or "python"."""
from __future__ import annotations

from ._choose import NO_EXTENSIONS, choose

IMPLEMENTATION, (fft, time_transform) = choose("_fft", "fft_py", ("fft", "time_transform"))

from .fft_py import (
    MAX_REL_ERROR,
    MAX_SIZE,
    MIN_SIZE,
    AccuracyError,
    FFTResult,
    check_size,
    mflops,
    rel_error,
    harness_input,
)

__all__ = ["IMPLEMENTATION", "MAX_REL_ERROR", "MAX_SIZE", "MIN_SIZE", "NO_EXTENSIONS", "AccuracyError",
           "FFTResult", "check_size", "fft", "mflops", "rel_error", "harness_input", "time_transform"]
