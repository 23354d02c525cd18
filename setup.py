"""Build glue: maps the card's folders onto the one `vws` import namespace, generates the
gRPC stubs from protos/ before every build (they are never committed) and compiles the Cython
modules of native/ (each has a pure-Python twin; the .c and .so outputs are never committed)."""
import os
import pathlib
import subprocess
import sys

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

ROOT = pathlib.Path(__file__).parent.resolve()


def generate_stubs() -> None:
    """protos/vws/v1/x.proto -> services/v1/x_pb2.py, imported as vws.v1.x_pb2."""
    subprocess.check_call([sys.executable, str(ROOT / "protos" / "generate.py")])


# setuptools checks package folders before any command runs, so the stubs come first.
generate_stubs()
packages = ["vws", "vws.native", "vws.v1"] + [
    "vws." + p for p in find_packages("services") if p != "v1"
]
# No fused multiply-adds: the extensions must round exactly like their Python twins.
CFLAGS = [] if os.name == "nt" else ["-ffp-contract=off"]
extensions = cythonize(
    [Extension("vws.native._accounting", ["native/_accounting.pyx"], extra_compile_args=CFLAGS),
     Extension("vws.native._copysum", ["native/_copysum.pyx"], extra_compile_args=CFLAGS),
     Extension("vws.native._fft", ["native/_fft.pyx", "native/fft_kernel.c"], extra_compile_args=CFLAGS + ["-O3"])],
    compiler_directives={"language_level": 3},
)
setup(
    packages=sorted(set(packages)),
    ext_modules=extensions,
    package_dir={"vws": "services", "vws.native": "native"},
    package_data={"vws.repository": ["migrations/*.py", "migrations/versions/*.py", "alembic.ini"]},
)
