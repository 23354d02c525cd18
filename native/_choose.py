"""How each public module of vws.native picks its implementation: the Cython extension when it
is built and importable, else its pure-Python twin (same API, same results). VWS_NO_EXTENSIONS=1
forces the twins."""
from __future__ import annotations

import importlib
import os

NO_EXTENSIONS = os.environ.get("VWS_NO_EXTENSIONS", "") not in ("", "0")


def choose(extension: str, twin: str, names: tuple[str, ...]) -> tuple[str, list]:
    """("cython" | "python", the named objects from the chosen module)."""
    module, implementation = None, "python"
    if not NO_EXTENSIONS:
        try:
            module, implementation = importlib.import_module(f"vws.native.{extension}"), "cython"
        except ImportError:  # the extension was not built
            pass
    module = module or importlib.import_module(f"vws.native.{twin}")
    return implementation, [getattr(module, n) for n in names]
