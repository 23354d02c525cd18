"""Accounting core: raw counter samples -> usage per workspace (CPU seconds across counter
resets, peak memory, memory-time integral, disk, network bytes, time spent at a limit).

Uses the Cython extension `_accounting` when it is built and importable, else the
pure-Python twin `accounting_py` (same API, same results bit for bit). VWS_NO_EXTENSIONS=1
forces the twin. IMPLEMENTATION says which one was chosen: "cython" or "python"."""
from __future__ import annotations

from ._choose import NO_EXTENSIONS, choose

IMPLEMENTATION, (Accumulators, accumulate) = choose("_accounting", "accounting_py", ("Accumulators", "accumulate"))

from .accounting_py import FIELDS

__all__ = ["Accumulators", "FIELDS", "IMPLEMENTATION", "NO_EXTENSIONS", "accumulate"]
