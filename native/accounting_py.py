"""Pure-Python twin of `_accounting`: raw counter samples -> usage per workspace.

The extension reuses `Accumulators` from here, and both run the same arithmetic in the same
order, so their results are equal bit for bit (tests compare them with ==).

Per sample of workspace i at time t (samples of one workspace arrive in time order;
samples of different workspaces may interleave). The first sample of a workspace only sets
first_time, last_time, the carried raw counters, memory_peak/memory_last and disk_last;
every later one adds, with dt = t - last_time[i]:

- cumulative counters cpu_ns, throttled_ns, oom, rx, tx: delta = new - last if new >= last
  else new (the counter restarted from zero when the workspace restarted, so all it now
  shows is new). cpu_seconds += delta / 1e9; seconds_at_cpu_limit += min(delta / 1e9, dt)
  for throttled_ns; oom_kills, net_rx, net_tx += delta.
- memory_byte_seconds += float(memory_last + mem) / 2.0 * dt (trapezoid);
  memory_peak = max(memory_peak, mem); memory_last = mem.
- seconds_at_memory_limit += dt when mem_limit > 0 and mem >= 0.99 * mem_limit, tested in
  integers as mem >= mem_limit - mem_limit // 100 (exact, and never overflows int64).
- disk_last = disk; samples += 1; last_time = t.
"""
from __future__ import annotations

import numpy as np

FLOAT_FIELDS = ("cpu_seconds", "memory_byte_seconds", "seconds_at_memory_limit",
                "seconds_at_cpu_limit", "first_time", "last_time")
INT_FIELDS = ("memory_peak", "memory_last", "disk_last", "net_rx", "net_tx", "oom_kills", "samples",
              "last_cpu_ns", "last_throttled_ns", "last_oom", "last_rx", "last_tx")
FIELDS = FLOAT_FIELDS + INT_FIELDS
INPUTS = ("ws", "t", "cpu_ns", "throttled_ns", "mem", "mem_limit", "oom", "disk", "rx", "tx")


class Accumulators:
    """Per-workspace state for n workspaces (indices 0..n-1): one float64 or int64 array per
    field, owned by the caller and updated in place by accumulate()."""

    def __init__(self, n: int):
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = n
        for name in FLOAT_FIELDS:
            setattr(self, name, np.zeros(n, dtype=np.float64))
        for name in INT_FIELDS:
            setattr(self, name, np.zeros(n, dtype=np.int64))

    def copy(self) -> "Accumulators":
        other = Accumulators(self.n)
        for name in FIELDS:
            getattr(other, name)[:] = getattr(self, name)
        return other

    def __eq__(self, other) -> bool:
        """Exact equality of every field (the twin and the extension must agree bit for bit)."""
        if not isinstance(other, Accumulators) or other.n != self.n:
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in FIELDS)

    __hash__ = None

    def __repr__(self) -> str:
        return f"Accumulators(n={self.n})"


def prepare(acc: Accumulators, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx):
    """Inputs as contiguous int64/float64 arrays, checked: equal lengths, ws in [0, n), and
    every accumulator array of length n. Shared by both implementations, so they accept and
    refuse the same inputs before touching any state."""
    arrays = [np.ascontiguousarray(ws, dtype=np.int64), np.ascontiguousarray(t, dtype=np.float64)]
    arrays += [np.ascontiguousarray(x, dtype=np.int64)
               for x in (cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx)]
    k = len(arrays[0])
    for name, a in zip(INPUTS, arrays):
        if a.ndim != 1 or len(a) != k:
            raise ValueError(f"{name}: expected a 1-d array of length {k}, got shape {a.shape}")
    n = acc.n
    for name in FIELDS:
        a = getattr(acc, name)
        want = np.float64 if name in FLOAT_FIELDS else np.int64
        if not isinstance(a, np.ndarray) or a.shape != (n,) or a.dtype != want:
            raise ValueError(f"Accumulators.{name}: expected {np.dtype(want)}[{n}]")
    if k and (int(arrays[0].min()) < 0 or int(arrays[0].max()) >= n):
        raise IndexError(f"workspace index out of range [0, {n})")
    return arrays


def accumulate(acc: Accumulators, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx) -> None:
    """Folds k samples into acc (in place). All inputs have length k: ws int64 workspace
    index, t float64 seconds, the others int64 raw counters/gauges."""
    arrays = prepare(acc, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx)
    ws_, t_, cpu_, thr_, mem_, lim_, oom_, disk_, rx_, tx_ = (a.tolist() for a in arrays)
    st = {name: getattr(acc, name).tolist() for name in FIELDS}
    cpu_seconds = st["cpu_seconds"]
    memory_byte_seconds = st["memory_byte_seconds"]
    at_mem_limit = st["seconds_at_memory_limit"]
    at_cpu_limit = st["seconds_at_cpu_limit"]
    first_time = st["first_time"]
    last_time = st["last_time"]
    memory_peak = st["memory_peak"]
    memory_last = st["memory_last"]
    disk_last = st["disk_last"]
    net_rx = st["net_rx"]
    net_tx = st["net_tx"]
    oom_kills = st["oom_kills"]
    samples = st["samples"]
    last_cpu = st["last_cpu_ns"]
    last_thr = st["last_throttled_ns"]
    last_oom = st["last_oom"]
    last_rx = st["last_rx"]
    last_tx = st["last_tx"]

    for j in range(len(ws_)):
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
            cpu_seconds[i] += d / 1e9
            p = last_thr[i]
            d = th - p if th >= p else th
            s = d / 1e9
            if s > dt:
                s = dt
            at_cpu_limit[i] += s
            p = last_oom[i]
            oom_kills[i] += o - p if o >= p else o
            p = last_rx[i]
            net_rx[i] += r - p if r >= p else r
            p = last_tx[i]
            net_tx[i] += x - p if x >= p else x
            memory_byte_seconds[i] += float(memory_last[i] + m) / 2.0 * dt
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

    for name in FIELDS:
        getattr(acc, name)[:] = st[name]
