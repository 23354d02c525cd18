"""Build glue: maps the card's folders onto the one `vws` import namespace and generates the
gRPC stubs from protos/ before every build (they are never committed)."""
import pathlib
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).parent.resolve()


def generate_stubs() -> None:
    """protos/vws/v1/x.proto -> services/v1/x_pb2.py, imported as vws.v1.x_pb2."""
    subprocess.check_call([sys.executable, str(ROOT / "protos" / "generate.py")])


# setuptools checks package folders before any command runs, so the stubs come first.
generate_stubs()
packages = ["vws", "vws.native", "vws.v1"] + [
    "vws." + p for p in find_packages("services") if p != "v1"
]
setup(
    packages=sorted(set(packages)),
    package_dir={"vws": "services", "vws.native": "native"},
    package_data={"vws.repository": ["migrations/*.py", "migrations/versions/*.py", "alembic.ini"]},
)
