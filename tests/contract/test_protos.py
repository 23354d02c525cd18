"""Contract checks on protos/vws/v1: buf STANDARD lint, stubs for another language that really
compile (C++ with Debian's protoc, grpc_cpp_plugin and g++), and the Python stubs in services/v1
matching what protos/generate.py makes now.

Nothing here skips: a missing tool is a failure that says to run `make setup`."""
from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
SOURCES = sorted(p.relative_to(PROTOS).as_posix() for p in (PROTOS / "vws" / "v1").glob("*.proto"))
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
STUBS = ROOT / "services" / "v1"
# Where Debian's libprotobuf-dev puts the well-known types (google/protobuf/*.proto).
SYSTEM_INCLUDE = pathlib.Path("/usr/include")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: run make setup")
    return path


def buf() -> str:
    if not os.access(BUF, os.X_OK):
        pytest.fail(f"buf CLI missing at {BUF.relative_to(ROOT)}: run make setup")
    return str(BUF)


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def test_protos_exist():
    assert SOURCES, f"no .proto files under {PROTOS / 'vws' / 'v1'}"


def test_buf_lint_standard():
    assert re.search(r"^\s*-\s*STANDARD\s*$", (PROTOS / "buf.yaml").read_text(), re.M), \
        "protos/buf.yaml should lint with the STANDARD rules"
    proc = run([buf(), "lint"], cwd=PROTOS)
    assert proc.returncode == 0, "buf lint found problems:\n" + explain(proc)


def test_buf_format_clean():
    proc = run([buf(), "format", "--diff", "--exit-code"], cwd=PROTOS)
    assert proc.returncode == 0, "protos are not buf-formatted (run make fmt):\n" + explain(proc)


def test_well_known_imports_resolve_with_debian_protoc(tmp_path):
    protoc = tool("protoc")
    imports = set()
    for src in SOURCES:
        imports |= set(re.findall(r'^\s*import\s+(?:public\s+|weak\s+)?"(google/protobuf/[^"]+)"\s*;',
                                  (PROTOS / src).read_text(), re.M))
    missing = sorted(i for i in imports if not (SYSTEM_INCLUDE / i).is_file())
    assert not missing, f"well-known types not under {SYSTEM_INCLUDE} (libprotobuf-dev): {missing}"
    # Only -I protos: Debian's protoc must find the well-known types by itself.
    out = tmp_path / "set.pb"
    proc = run([protoc, "-I", str(PROTOS), "--include_imports", f"--descriptor_set_out={out}", *SOURCES])
    assert proc.returncode == 0, explain(proc)
    from google.protobuf import descriptor_pb2

    names = {f.name for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    assert imports <= names, f"not resolved: {sorted(imports - names)}"
    assert set(SOURCES) <= names


def test_cpp_stubs_generate_and_compile(tmp_path):
    protoc, plugin, gxx, pkg_config = (tool(n) for n in ("protoc", "grpc_cpp_plugin", "g++", "pkg-config"))
    out = tmp_path / "cpp"
    out.mkdir()
    proc = run([protoc, "-I", str(PROTOS), f"--cpp_out={out}", f"--grpc_out={out}",
                f"--plugin=protoc-gen-grpc={plugin}", *SOURCES])
    version = run([protoc, "--version"]).stdout.strip()
    assert proc.returncode == 0, f"C++ generation failed with Debian's protoc ({version}):\n" + explain(proc)

    expected = sorted(out / src.replace(".proto", suffix)
                      for src in SOURCES for suffix in (".pb.h", ".pb.cc", ".grpc.pb.h", ".grpc.pb.cc"))
    absent = [str(p.relative_to(out)) for p in expected if not p.is_file()]
    assert not absent, f"protoc did not generate: {absent}"

    flags = run([pkg_config, "--cflags", "grpc++", "protobuf"])
    assert flags.returncode == 0, "pkg-config knows no grpc++/protobuf (libgrpc++-dev): run make setup\n" + explain(flags)
    cflags = flags.stdout.split()
    sources = sorted(out.rglob("*.cc"))

    def compile_one(cc: pathlib.Path) -> subprocess.CompletedProcess:
        return run([gxx, "-std=c++17", "-O0", "-g0", "-c", f"-I{out}", *cflags, str(cc),
                    "-o", str(cc.with_suffix(".o"))])

    workers = max(1, min(len(sources), os.cpu_count() or 2, 4))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(compile_one, sources))
    failed = [explain(r)[-4000:] for r in results if r.returncode != 0]
    assert not failed, f"{len(failed)} of {len(sources)} generated C++ files do not compile:\n" + "\n".join(failed)
    assert all(cc.with_suffix(".o").stat().st_size > 0 for cc in sources)


def test_python_stubs_up_to_date(tmp_path):
    fresh = tmp_path / "v1"
    proc = run([sys.executable, str(PROTOS / "generate.py"), "--out", str(fresh)])
    assert proc.returncode == 0, explain(proc)

    def files(d: pathlib.Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} if d.is_dir() else {}

    want, have = files(fresh), files(STUBS)
    assert want, "protos/generate.py --out generated nothing"
    stale = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
    assert not stale, (f"stubs are stale: run make setup (differ, missing or extra in "
                       f"{STUBS.relative_to(ROOT)}: {stale})")
