"""`vws up`, `vws down`, `vws status`: the whole stack on this machine, in one data directory.

Each service runs as its own process (as it would on separate hosts), logs to
DATA_DIR/log/<service>.log and leaves DATA_DIR/run/<service>.json saying where it answers, which
is how every other command finds the stack untold."""
from __future__ import annotations

import getpass
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import output as out
from .connection import CliError, data_dir, describe_rpc_error, use_credentials
from ..common import clients, config, errors, host
from ..v1 import image_pb2, repository_pb2

SERVICES = ("repository", "factory", "manager")
# Where scripts/build-guest.sh (run by `make setup`) leaves the test guest.
DEFAULT_GUEST_DIR = "/var/lib/vws/guest"
IMAGE_TIMEOUT = 600.0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return host.alive(pid)  # a zombie child of ours is not alive


def serving(address: str, timeout: float = 1.0) -> bool:
    try:
        r = health_pb2_grpc.HealthStub(clients.channel(address)).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return r.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def running(dd: pathlib.Path, service: str) -> dict | None:
    info = config.read_run_file(dd, service)
    if info and alive(int(info.get("pid", 0))):
        return info
    return None


def _tail(path: pathlib.Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _start(dd: pathlib.Path, service: str, flags: list[str], timeout: float) -> dict:
    logs = dd / "log"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{service}.log"
    config.remove_run_file(dd, service)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vws.cli.main", service, "--data-dir", str(dd), *flags],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"the {service} stopped at start (exit {proc.returncode}); its log {log_path} ends:\n"
                           + _tail(log_path))
        info = config.read_run_file(dd, service)
        if info and info.get("pid") == proc.pid and serving(info["address"]):
            return info
        time.sleep(0.05)
    proc.terminate()
    raise CliError(f"the {service} did not answer within {timeout:g}s; its log {log_path} ends:\n" + _tail(log_path))


def up(args) -> int:
    dd = data_dir(args)
    dd.mkdir(parents=True, exist_ok=True)
    if not args.insecure:
        # The site's CA, the services' certificates and the administrator's credential, made
        # on the first start (and renewed when near their end); the CLI finds them there.
        from ..common.auth import pki  # here only: its cryptography would slow every other command
        made = pki.ensure_dir(dd / "pki").made
        if made:
            print(f"{'pki':<10} made {', '.join(made)} in {dd / 'pki'}")
    use_credentials(args)
    started = {}
    for service in SERVICES:
        info = running(dd, service)
        if info and serving(info["address"]):
            print(f"{service:<10} already running at {info['address']} (pid {info['pid']})")
            started[service] = info
            continue
        flags: list[str] = []
        listen = getattr(args, f"{service}_listen", None)
        if listen:
            flags += ["--listen", listen]
        if service != "repository":
            flags += ["--repository", started["repository"]["address"]]
        if service == "manager" and args.backend:
            flags += ["--backend", args.backend]
        if args.insecure:
            flags += ["--insecure", "true"]
        t0 = time.monotonic()
        started[service] = _start(dd, service, flags, args.timeout)
        print(f"{service:<10} serving at {started[service]['address']} (pid {started[service]['pid']}, "
              f"{time.monotonic() - t0:.1f}s; log {dd / 'log' / (service + '.log')})")
    register_guest(started["repository"]["address"])
    print(f"stack up in {dd}; try: vws create --wait")
    if not args.foreground:
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop and all(running(dd, s) for s in SERVICES):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    return down(args)


def down(args) -> int:
    dd = data_dir(args)
    any_found = False
    for service in reversed(SERVICES):
        info = config.read_run_file(dd, service)
        if not info:
            continue
        any_found = True
        pid = int(info.get("pid", 0))
        if not alive(pid):
            config.remove_run_file(dd, service)
            print(f"{service:<10} was not running")
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
            print(f"{service:<10} killed (it did not stop within 20s)")
        else:
            print(f"{service:<10} stopped")
        config.remove_run_file(dd, service)
    if not any_found:
        print(f"no stack running in {dd}")
    return 0


def status(args) -> int:
    dd = data_dir(args)
    rows, doc = [], {}
    try:
        use_credentials(args)
    except (errors.VwsError, CliError):
        pass  # no stack was ever started here: every service shows as stopped
    for service in SERVICES:
        info = config.read_run_file(dd, service) or {}
        pid = int(info.get("pid", 0))
        state = "stopped" if not info else ("serving" if alive(pid) and serving(info["address"])
                                            else "not answering" if alive(pid) else "dead")
        doc[service] = {"state": state, **info}
        rows.append([service, state, info.get("address", "-"), str(pid or "-")])
    if getattr(args, "output", "table") == "json":
        out.print_json({"data_dir": str(dd), "services": doc})
    else:
        print(f"data directory: {dd}")
        print(out.table(rows, ["SERVICE", "STATE", "ADDRESS", "PID"]))
    return 0 if all(d["state"] == "serving" for d in doc.values()) else 1


def guest_images(guest: pathlib.Path) -> list[tuple[str, image_pb2.Image]]:
    """The test guest's two images: `busybox` (the hypervisor loads its kernel and initrd) and
    `busybox-disk` (a qcow2 disk that boots by itself), both public, both with the guest agent.
    Kernel arguments come from the guest's manifest.json when it has them."""
    try:
        manifest = json.loads((guest / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    if not isinstance(manifest, dict):
        manifest = {}
    kernel_args = str(manifest.get("kernel_args") or manifest.get("direct_boot_cmdline") or "console=ttyS0")
    I, F = image_pb2.Image, image_pb2.ImageFile
    return [
        ("busybox", I(boot=I.BOOT_KERNEL, visibility=I.VISIBILITY_PUBLIC, guest_agent=True, kernel_args=kernel_args,
                      description="test guest: busybox and qemu-ga, booted from its kernel and initrd",
                      files=[F(role=F.ROLE_KERNEL, format=F.FORMAT_RAW, location=str(guest / "vmlinuz")),
                             F(role=F.ROLE_INITRD, format=F.FORMAT_RAW, location=str(guest / "initrd.img"))])),
        ("busybox-disk", I(boot=I.BOOT_DISK, visibility=I.VISIBILITY_PUBLIC, guest_agent=True,
                           description="test guest: busybox and qemu-ga on a disk that boots by itself",
                           files=[F(role=F.ROLE_DISK, format=F.FORMAT_QCOW2, location=str(guest / "disk.qcow2"))])),
    ]


def register_guest(repository_address: str) -> None:
    """Adds the test guest's images to the catalogue when the guest is built and they are not
    there yet; says so in one line and carries on when it is not built."""
    guest = pathlib.Path(os.environ.get("VWS_GUEST_DIR") or DEFAULT_GUEST_DIR)
    if not guest.is_dir():
        print(f"{'images':<10} no test guest in {guest}: `make setup` builds it (then `vws up` again adds it)")
        return
    repo = clients.repository(repository_address)
    for image_id, image in guest_images(guest):
        try:
            repo.GetImage(repository_pb2.GetImageRequest(name=f"images/{image_id}"), timeout=10)
            print(f"{'image':<10} {image_id} already registered")
            continue
        except grpc.RpcError as exc:
            if not isinstance(errors.from_rpc_error(exc), errors.NotFound):
                print(f"{'image':<10} {image_id} not registered: {describe_rpc_error(exc)}")
                continue
        missing = [f.location for f in image.files if not os.path.isfile(f.location)]
        if missing:
            print(f"{'image':<10} {image_id} not registered: no {', '.join(missing)} (`make setup` builds the guest)")
            continue
        t0 = time.monotonic()
        try:
            made = repo.CreateImage(repository_pb2.CreateImageRequest(
                image_id=image_id, image=image, owner=getpass.getuser()), timeout=IMAGE_TIMEOUT).image
        except grpc.RpcError as exc:
            if isinstance(errors.from_rpc_error(exc), errors.AlreadyExists):  # another `vws up` got there first
                print(f"{'image':<10} {image_id} already registered")
            else:
                print(f"{'image':<10} {image_id} not registered: {describe_rpc_error(exc)}")
            continue
        print(f"{'image':<10} {image_id} registered from {guest} ({out.size(made.size_bytes)}, "
              f"{time.monotonic() - t0:.1f}s)")


def add_parsers(command) -> None:
    c = command("up", up, "start the repository, a factory and a manager on this machine")
    c.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the stack")
    c.add_argument("--repository-listen", default=None, help="host:port (default 127.0.0.1:7701)")
    c.add_argument("--factory-listen", default=None, help="host:port (default 127.0.0.1:7702)")
    c.add_argument("--manager-listen", default=None, help="host:port (default 127.0.0.1:7703)")
    c.add_argument("--backend", default=None, help="dynamic-accounts (default) or account-pool")
    c.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the services to answer")
    command("down", down, "stop the stack that `vws up` started")
    command("status", status, "show the services `vws up` started", read=True)
