"""vws-fft, the FFT benchmark harness as a static executable (native/fft_main.c, issue 7):
built with scripts/build-fft.sh into a temporary directory, run at small sizes with a tiny
min-time; its JSON lines carry the fields and obey the timing method's formulas (those of
vws.native.fft_py.measure), its transforms agree with its reference, it is statically linked,
and bad arguments exit 2 naming the argument. No timing assertions."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-fft.sh"
FIELDS = {"n", "log2n", "iterations", "seconds_per_transform", "mflops", "spread", "max_rel_error",
          "repeats", "runs"}
MAX_REL_ERROR = 1e-10

pytestmark = pytest.mark.requires(shutil.which(os.environ.get("CC", "gcc")) is None, "no C compiler")


@pytest.fixture(scope="module")
def exe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fft-build")
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[setup] fft" in proc.stdout and "built" in proc.stdout
    path = out / "vws-fft"
    assert path.is_file() and os.access(path, os.X_OK)
    return path


def run(exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def results(exe: Path, *args: str) -> list[dict]:
    proc = run(exe, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines and all(line.strip() for line in lines)
    return [json.loads(line) for line in lines]


def test_build_is_idempotent(exe):
    before = exe.stat().st_mtime_ns
    proc = subprocess.run(["bash", str(SCRIPT), str(exe.parent)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "(skip)" in proc.stdout and len(proc.stdout.splitlines()) == 1
    assert exe.stat().st_mtime_ns == before


def test_statically_linked(exe):
    if shutil.which("ldd"):
        proc = subprocess.run(["ldd", str(exe)], capture_output=True, text=True)
        assert "not a dynamic executable" in proc.stdout + proc.stderr
    if shutil.which("file"):
        assert "statically linked" in subprocess.run(["file", "-b", str(exe)], capture_output=True,
                                                     text=True).stdout
    # No PT_DYNAMIC program header (type 2) in the ELF64 file.
    data = exe.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3a], "little")
    types = [int.from_bytes(data[phoff + i * phentsize:phoff + i * phentsize + 4], "little")
             for i in range(phnum)]
    assert 2 not in types and 3 not in types  # PT_DYNAMIC, PT_INTERP


def test_small_sizes_fields_and_formulas(exe):
    repeat = 3
    rows = results(exe, "--sizes", "6-12", "--min-time", "0.002", "--repeat", str(repeat), "--seed", "7")
    assert [r["log2n"] for r in rows] == list(range(6, 13))
    for r in rows:
        assert FIELDS <= r.keys()
        n, log2n = r["n"], r["log2n"]
        assert n == 1 << log2n
        assert isinstance(r["iterations"], int) and r["iterations"] >= 1
        assert r["iterations"] & (r["iterations"] - 1) == 0  # doubled from 1
        assert r["repeats"] == repeat and len(r["runs"]) == repeat
        runs = r["runs"]
        assert all(isinstance(t, float) and t > 0 for t in runs)
        best, worst = min(runs), max(runs)
        assert r["seconds_per_transform"] == pytest.approx(best / r["iterations"], rel=1e-12)
        assert r["mflops"] == pytest.approx(5 * n * math.log2(n) / (r["seconds_per_transform"] * 1e6),
                                            rel=1e-12)
        assert r["spread"] == pytest.approx((worst - best) / best, rel=1e-9, abs=1e-15)
        assert 0 <= r["max_rel_error"] <= MAX_REL_ERROR
        assert r["seed"] == 7


def test_list_of_sizes_in_order_and_defaults(exe):
    rows = results(exe, "--sizes", "8,6,10", "--min-time", "0.001")
    assert [r["n"] for r in rows] == [256, 64, 1024]
    assert all(r["repeats"] == 5 and len(r["runs"]) == 5 for r in rows)  # fft_py's default


def test_same_seed_same_input(exe):
    # The error is a function of the input alone: equal seeds give equal errors.
    a = results(exe, "--sizes", "9", "--min-time", "0.001", "--repeat", "1", "--seed", "3")
    b = results(exe, "--sizes=9", "--min-time=0.001", "--repeat=1", "--seed=3")
    assert a[0]["max_rel_error"] == b[0]["max_rel_error"]


# The values each argument refuses; None: the argument alone, without its value.
BAD_VALUES = {
    "--sizes": ["5-9", "6-23", "9-7", "6,x", "", None],
    "--min-time": ["0", "-1", "abc"],
    "--repeat": ["0", "1001", "2.5"],
    "--seed": ["-1", "x"],
    "--bogus": [None],
}


@pytest.mark.parametrize("name, value", [(name, value) for name, values in BAD_VALUES.items() for value in values])
def test_bad_arguments_exit_2(exe, name, value):
    proc = run(exe, name, *([] if value is None else [value]))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and name in lines[0]
    if name == "--sizes":
        assert "6" in lines[0] and "22" in lines[0]
    elif name == "--repeat":
        assert "1000" in lines[0]


def test_help(exe):
    proc = run(exe, "--help")
    assert proc.returncode == 0 and "--sizes" in proc.stdout and "--min-time" in proc.stdout
