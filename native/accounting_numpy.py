"""NumPy vectorised version of the accounting core: the benchmark's anchor.

Same rules as `accounting_py` (see its docstring), computed on whole arrays: a stable argsort
on the workspace index groups each workspace's samples and keeps their arrival (= time)
order, each sample is paired with the one before it in its group (the first of a group with
the carried state, or with nothing when the workspace has no sample yet), and per-group sums
and maxima come from np.add.reduceat / np.maximum.reduceat. Integer results equal the
other implementations exactly; float sums are added in a different order, so they agree
to rounding (about 1e-12 relative), not bit for bit."""
from __future__ import annotations

import numpy as np

from .accounting_py import Accumulators, prepare

__all__ = ["Accumulators", "accumulate"]


def accumulate(acc: Accumulators, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx) -> None:
    arrays = prepare(acc, ws, t, cpu_ns, throttled_ns, mem, mem_limit, oom, disk, rx, tx)
    k = len(arrays[0])
    if k == 0:
        return
    order = np.argsort(arrays[0], kind="stable")
    ws, t, cpu, thr, mem, lim, oom, disk, rx, tx = (a[order] for a in arrays)

    starts = np.flatnonzero(np.concatenate(([True], ws[1:] != ws[:-1])))
    ends = np.append(starts[1:] - 1, k - 1)
    gws = ws[starts]  # the workspaces in this batch, each once
    seen = acc.samples[gws] > 0  # has state from an earlier batch
    first = np.zeros(k, dtype=bool)
    first[starts] = ~seen  # samples with nothing before them: no deltas

    def previous(x, carried):
        p = np.empty_like(x)
        p[1:] = x[:-1]
        p[starts] = carried[gws]
        return p

    def delta(x, carried):  # counter increase; a counter below its last value was reset
        p = previous(x, carried)
        d = np.where(x >= p, x - p, x)
        d[first] = 0
        return d

    dt = t - previous(t, acc.last_time)
    dt[first] = 0.0

    def add(field, per_sample):
        getattr(acc, field)[gws] += np.add.reduceat(per_sample, starts)

    add("cpu_seconds", delta(cpu, acc.last_cpu_ns) / 1e9)
    add("seconds_at_cpu_limit", np.minimum(delta(thr, acc.last_throttled_ns) / 1e9, dt))
    add("oom_kills", delta(oom, acc.last_oom))
    add("net_rx", delta(rx, acc.last_rx))
    add("net_tx", delta(tx, acc.last_tx))
    add("memory_byte_seconds", (previous(mem, acc.memory_last) + mem).astype(np.float64) / 2.0 * dt)
    add("seconds_at_memory_limit", np.where((lim > 0) & (mem >= lim - lim // 100), dt, 0.0))

    acc.memory_peak[gws] = np.maximum(acc.memory_peak[gws], np.maximum.reduceat(mem, starts))
    new = gws[~seen]
    acc.first_time[new] = t[starts[~seen]]
    for field, x in (("memory_last", mem), ("disk_last", disk), ("last_cpu_ns", cpu),
                     ("last_throttled_ns", thr), ("last_oom", oom), ("last_rx", rx),
                     ("last_tx", tx), ("last_time", t)):
        getattr(acc, field)[gws] = x[ends]
    acc.samples[gws] += ends - starts + 1
