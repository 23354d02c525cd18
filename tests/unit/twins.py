"""What every public module of vws.native promises about its implementation: the Cython
extension when it is built (and VWS_NO_EXTENSIONS is not set), else its pure-Python twin."""
from __future__ import annotations

import os
import subprocess
import sys


def expected(extension) -> str:
    """"cython" or "python": what the public module must have chosen, given the extension
    module (None when it is not built)."""
    forced = os.environ.get("VWS_NO_EXTENSIONS", "") not in ("", "0")
    return "python" if forced or extension is None else "cython"


def chosen_with_no_extensions(public: str, attribute: str) -> list[str]:
    """[IMPLEMENTATION, the module `attribute` comes from] of vws.native.<public> imported
    afresh with VWS_NO_EXTENSIONS=1."""
    code = f"import vws.native.{public} as m; print(m.IMPLEMENTATION, m.{attribute}.__module__)"
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, "VWS_NO_EXTENSIONS": "1"},
                          capture_output=True, text=True, check=True).stdout.split()
