# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython FFT harness over the C kernel fft_kernel.c (radix-4 Stockham, plan/execute): the
same API, result fields and timing method as the pure-Python twin `fft_py`, whose docstring
defines the method and whose harness logic (sizes, input, error check, `measure`) is
reused here. What differs: the transform is the C kernel, and each timed run loops over it
without the GIL between two reads of the C monotonic clock (or of the injected clock)."""
import threading

import numpy as np

from libc.errno cimport errno

from . import fft_py as _py
from .fft_py import (MAX_REL_ERROR, MAX_SIZE, MIN_SIZE, AccuracyError, FFTResult, check_size, mflops,
                     rel_error, harness_input)

__all__ = ["MAX_REL_ERROR", "MAX_SIZE", "MIN_SIZE", "AccuracyError", "FFTResult", "Plan", "check_size", "fft",
           "mflops", "rel_error", "harness_input", "time_transform"]

cdef extern from "fft_kernel.h" nogil:
    ctypedef struct vws_fft_plan:
        pass
    vws_fft_plan* vws_fft_plan_create(size_t n)
    void vws_fft_plan_destroy(vws_fft_plan* plan)
    void vws_fft_execute(vws_fft_plan* plan, const double* inp, double* out)
    double vws_fft_time(vws_fft_plan* plan, const double* inp, double* out, long iterations)


cdef class Plan:
    """Twiddles and work buffer for one size; execute(x, out=None) -> out (a new array when
    out is None; out may be x itself). The work buffer serves one transform at a time: a
    lock per plan serialises threads sharing it (the GIL is released while they wait)."""
    cdef vws_fft_plan* plan
    cdef readonly Py_ssize_t n
    cdef object lock

    def __cinit__(self, n):
        self.n = check_size(n)
        self.lock = threading.Lock()
        self.plan = vws_fft_plan_create(<size_t>self.n)
        if self.plan == NULL:
            raise MemoryError(f"FFT plan of size {self.n}")

    def __dealloc__(self):
        if self.plan != NULL:
            vws_fft_plan_destroy(self.plan)

    def execute(self, x, out=None):
        a, out = self._arrays(x, out)
        cdef const double[::1] src = a.view(np.float64)
        cdef double[::1] dst = out.view(np.float64)
        with self.lock:
            with nogil:
                vws_fft_execute(self.plan, &src[0], &dst[0])
        return out

    def _arrays(self, x, out):
        a = _py.as_input(x)
        if a.shape[0] != self.n:
            raise ValueError(f"input of size {a.shape[0]} for a plan of size {self.n}")
        if out is None:
            out = np.empty(self.n, dtype=np.complex128)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.complex128 or out.shape != (self.n,)
              or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"out must be a writeable contiguous complex128 array of size {self.n}")
        return a, out

    def time(self, x, out, long iterations, clock=None):
        """Seconds taken by `iterations` transforms x -> out (one run of the harness)."""
        x, out = self._arrays(x, out)
        cdef const double[::1] src = x.view(np.float64)
        cdef double[::1] dst = out.view(np.float64)
        cdef double t
        with self.lock:
            if clock is None:
                with nogil:
                    t = vws_fft_time(self.plan, &src[0], &dst[0], iterations)
                return t
            t0 = clock()
            with nogil:
                vws_fft_time(self.plan, &src[0], &dst[0], iterations)
            return clock() - t0


_plans = {}


cdef Plan _plan(Py_ssize_t n):
    """A plan per size, kept (the largest holds 2^22 complex twiddles and work: 96 MiB)."""
    p = _plans.get(n)
    if p is None:
        if len(_plans) >= 4:
            _plans.clear()
        p = _plans[n] = Plan(n)
    return p


def fft(x):
    """Forward transform of x (a one-dimensional array of 2^6..2^22 complex values) by the C
    kernel, as numpy.fft.fft computes it; returns a new complex128 array."""
    a = _py.as_input(x)
    return _plan(a.shape[0]).execute(a)


def time_transform(n, min_time=0.1, repeats=5, clock=None):
    """Times the C kernel at size n by the harness's method (fft_py's docstring); clock
    (a callable returning seconds) replaces the C monotonic clock when given."""
    n = check_size(n)
    x = harness_input(n)
    plan = _plan(n)
    err = _py.check_accuracy(n, rel_error(plan.execute(x), np.fft.fft(x)))
    out = np.empty(n, dtype=np.complex128)

    def run(long iterations):
        return plan.time(x, out, iterations, clock)

    return _py.measure(run, n, min_time, repeats, max_rel_error=err, implementation="cython")
