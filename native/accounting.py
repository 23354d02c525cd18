"""Accounting core: raw counter samples -> usage per workspace (CPU seconds across counter
resets, peak memory, memory-time integral, disk, network bytes, time spent at a limit).

Uses the Cython extension `_accounting` when it is built and importable, else the
pure-Python twin `accounting_py` (same API, same results bit for bit). VWS_NO_EXTENSIONS=1
forces the twin. IMPLEMENTATION says which one was chosen: "cython" or "python"."""
from __future__ import annotations

import os

NO_EXTENSIONS = os.environ.get("VWS_NO_EXTENSIONS", "") not in ("", "0")

if not NO_EXTENSIONS:  # pragma: no branch
    try:
        from ._accounting import Accumulators, accumulate  # type: ignore[import-not-found]

        IMPLEMENTATION = "cython"
    except ImportError:  # pragma: no cover - the extension was not built
        from .accounting_py import Accumulators, accumulate

        IMPLEMENTATION = "python"
else:
    from .accounting_py import Accumulators, accumulate

    IMPLEMENTATION = "python"

from .accounting_py import FIELDS  # noqa: E402

__all__ = ["Accumulators", "FIELDS", "IMPLEMENTATION", "NO_EXTENSIONS", "accumulate"]
