"""Generates the Python stubs: protos/vws/v1/*.proto -> services/v1/ (the vws.v1 package).

Run by setup.py at every build and by `make gen`; the output is not committed.
`--out DIR` writes the same files elsewhere (the contract tests compare them with services/v1)."""
import argparse
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "services" / "v1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help=f"output folder (default {OUT})")
    out = parser.parse_args(argv).out.resolve()
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "vws" / "v1").glob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main([
            "protoc", f"-I{PROTOS}", f"-I{well_known}",
            f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *sources,
        ])
        if rc != 0:
            print("protoc failed", file=sys.stderr)
            return rc
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*_pb2*.py*"):
            old.unlink()
        for new in (pathlib.Path(tmp) / "vws" / "v1").iterdir():
            shutil.copy2(new, out / new.name)
    (out / "__init__.py").write_text('"""Generated from protos/vws/v1 by protos/generate.py. Do not edit."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
