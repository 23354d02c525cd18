# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Cython accounting core: raw counter samples -> usage per workspace.

Same arithmetic, in the same order, as the pure-Python twin `accounting_py` (whose docstring
states the rules), so results are equal bit for bit. Typed memoryviews only, no NumPy C-API:
the build needs nothing but Cython. setup.py compiles it with -ffp-contract=off so the
compiler does not fuse multiply-adds (which would round differently from Python)."""
from libc.stdint cimport int64_t

from .accounting_py import Accumulators, prepare

__all__ = ["Accumulators", "accumulate"]


def accumulate(acc, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx):
    """Folds k samples into acc (in place); see accounting_py.accumulate. The loop runs
    without the GIL."""
    arrays = prepare(acc, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx)
    cdef const int64_t[::1] ws_ = arrays[0]
    cdef const double[::1] t_ = arrays[1]
    cdef const int64_t[::1] cpu_ = arrays[2]
    cdef const int64_t[::1] thr_ = arrays[3]
    cdef const int64_t[::1] mem_ = arrays[4]
    cdef const int64_t[::1] lim_ = arrays[5]
    cdef const int64_t[::1] oom_ = arrays[6]
    cdef const int64_t[::1] disk_ = arrays[7]
    cdef const int64_t[::1] rx_ = arrays[8]
    cdef const int64_t[::1] tx_ = arrays[9]

    cdef double[::1] cpu_seconds = acc.cpu_seconds
    cdef double[::1] memory_byte_seconds = acc.memory_byte_seconds
    cdef double[::1] at_mem_limit = acc.seconds_at_memory_limit
    cdef double[::1] at_cpu_limit = acc.seconds_at_cpu_limit
    cdef double[::1] first_time = acc.first_time
    cdef double[::1] last_time = acc.last_time
    cdef int64_t[::1] memory_peak = acc.memory_peak
    cdef int64_t[::1] memory_last = acc.memory_last
    cdef int64_t[::1] disk_last = acc.disk_last
    cdef int64_t[::1] net_rx = acc.net_rx
    cdef int64_t[::1] net_tx = acc.net_tx
    cdef int64_t[::1] oom_kills = acc.oom_kills
    cdef int64_t[::1] samples = acc.samples
    cdef int64_t[::1] last_cpu = acc.last_cpu_ns
    cdef int64_t[::1] last_thr = acc.last_throttled_ns
    cdef int64_t[::1] last_oom = acc.last_oom
    cdef int64_t[::1] last_rx = acc.last_rx
    cdef int64_t[::1] last_tx = acc.last_tx

    cdef Py_ssize_t j, k = ws_.shape[0]
    cdef int64_t i, c, th, m, o, r, x, p, d, lim
    cdef double tj, dt, s

    with nogil:
        for j in range(k):
            i = ws_[j]
            tj = t_[j]
            c = cpu_[j]
            th = thr_[j]
            m = mem_[j]
            o = oom_[j]
            r = rx_[j]
            x = tx_[j]
            if samples[i] == 0:
                first_time[i] = tj
            else:
                dt = tj - last_time[i]
                p = last_cpu[i]
                d = c - p if c >= p else c
                cpu_seconds[i] += <double>d / 1e9
                p = last_thr[i]
                d = th - p if th >= p else th
                s = <double>d / 1e9
                if s > dt:
                    s = dt
                at_cpu_limit[i] += s
                p = last_oom[i]
                oom_kills[i] += o - p if o >= p else o
                p = last_rx[i]
                net_rx[i] += r - p if r >= p else r
                p = last_tx[i]
                net_tx[i] += x - p if x >= p else x
                memory_byte_seconds[i] += <double>(memory_last[i] + m) / 2.0 * dt
                lim = lim_[j]
                if lim > 0 and m >= lim - lim // 100:
                    at_mem_limit[i] += dt
            if m > memory_peak[i]:
                memory_peak[i] = m
            memory_last[i] = m
            disk_last[i] = disk_[j]
            last_cpu[i] = c
            last_thr[i] = th
            last_oom[i] = o
            last_rx[i] = r
            last_tx[i] = x
            last_time[i] = tj
            samples[i] += 1
