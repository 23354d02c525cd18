"""Settings for each service, from (lowest to highest) defaults, a TOML file, VWS_*
environment variables and command-line flags.

TOML: top-level keys apply to every service (data_dir, repository); a [repository],
[factory] or [manager] table applies to that service. Environment: VWS_<FIELD> for the shared
fields, VWS_<SERVICE>_<FIELD> for the rest (VWS_MANAGER_POOL_SIZE=16)."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import html
import json
import os
import pathlib
import socket
import tomllib
from typing import Any

from . import units
from .errors import InvalidArgument

SHARED_FIELDS = {"data_dir", "repository", "pki_dir", "insecure", "ca", "max_lifetime"}


def default_data_dir() -> pathlib.Path:
    env = os.environ.get("VWS_DATA_DIR")
    if env:
        return pathlib.Path(env)
    if os.geteuid() == 0:
        return pathlib.Path("/var/lib/vws")
    return pathlib.Path(os.environ.get("XDG_DATA_HOME", pathlib.Path.home() / ".local/share")) / "vws"


def _field(default: Any, help: str, unit: str = "str"):
    return dataclasses.field(default=default, metadata={"help": help, "unit": unit})


def _site_max_lifetime():
    # One site maximum that the factory (create) and the repository (extend) both read.
    return _field(dt.timedelta(days=14), "the longest a workspace may live, from its creation: a create asks for at "
                  "most this and an extension ends no later (one site setting, for the factory and the repository)",
                  "duration")


@dataclasses.dataclass
class Transport:
    """What every service shares: how it proves itself and whom it trusts (see `vws.common.tls`)."""
    pki_dir: pathlib.Path = _field(None, "the site's local PKI (CA, service and administrator certificates), made "
                                   "there on first start when missing; empty means DATA_DIR/pki", "path")
    certificate: pathlib.Path = _field(None, "this service's TLS certificate (PEM); empty means PKI_DIR/ROLE.pem", "path")
    private_key: pathlib.Path = _field(None, "its private key (PEM); empty means PKI_DIR/ROLE.key", "path")
    ca: pathlib.Path = _field(None, "the CA certificate(s) (PEM) that vouch for vws services; empty means "
                              "PKI_DIR/ca.pem", "path")
    grid_certificates: pathlib.Path = _field(pathlib.Path("/etc/grid-security/certificates"), "trusted CAs for "
                                             "client certificates and proxies, in the grid layout (hashed names)",
                                             "path")
    insecure: bool = _field(False, "serve and call in plain text, with no authentication or authorisation; only on "
                            "loopback addresses, for debugging", "bool")


@dataclasses.dataclass
class RepositorySettings(Transport):
    data_dir: pathlib.Path = _field(None, "where the embedded database and run files live", "path")
    listen: str = _field("127.0.0.1:7701", "host:port to serve on (port 0 picks a free one)")
    database_url: str = _field("", "SQLAlchemy URL; empty means SQLite in the data directory")
    heartbeat_timeout: dt.timedelta = _field(dt.timedelta(seconds=10), "a manager silent this long gets no new workspaces", "duration")
    max_lifetime: dt.timedelta = _site_max_lifetime()
    expiry_interval: dt.timedelta = _field(dt.timedelta(seconds=1), "how often expired workspaces are looked for", "duration")
    vomsdir: pathlib.Path = _field(pathlib.Path("/etc/grid-security/vomsdir"), "the VOMS servers whose attribute "
                                   "certificates are trusted (<vo>/<host>.lsc)", "path")
    token_issuers: pathlib.Path = _field(None, "TOML file of trusted WLCG token issuers ([[issuer]] name, iss, jwks, "
                                         "audiences); empty means DATA_DIR/token-issuers.toml when present", "path")
    policy: pathlib.Path = _field(None, "the authorisation policy (TOML, reloaded when it changes); empty means "
                                  "DATA_DIR/policy.toml, made on first start with one rule for the administrator",
                                  "path")
    administrators: str = _field("", "further administrators: comma-separated identities (DNs); the local PKI's "
                                 "administrator always is one")
    session_lifetime: dt.timedelta = _field(dt.timedelta(hours=12), "how long a session from a proxy login lasts "
                                            "(never past the proxy)", "duration")
    image_store: pathlib.Path = _field(None, "where image files are kept (every manager must be able to read it: "
                                       "local disk on one host, a shared filesystem across hosts); empty means "
                                       "DATA_DIR/images", "path")


@dataclasses.dataclass
class FactorySettings(Transport):
    data_dir: pathlib.Path = _field(None, "where run files live", "path")
    listen: str = _field("127.0.0.1:7702", "host:port to serve on")
    repository: str = _field("127.0.0.1:7701", "host:port of the RepositoryService")
    default_lifetime: dt.timedelta = _field(dt.timedelta(days=1), "lifetime of a workspace that asks for none", "duration")
    max_lifetime: dt.timedelta = _site_max_lifetime()
    default_memory: int = _field(512 * 1024**2, "memory of a workspace that asks for none", "size")
    default_disk: int = _field(1024**3, "disk of a workspace that asks for none", "size")
    default_cpu: int = _field(250, "CPU (millicores) of a workspace that asks for none", "cpu")
    default_bandwidth: int = _field(100 * 1000**2, "bandwidth (bits/s) of a workspace that asks for none", "bandwidth")
    max_memory: int = _field(64 * 1024**3, "the most memory one workspace may ask for", "size")
    max_disk: int = _field(1024**4, "the most disk one workspace may ask for", "size")
    max_cpu: int = _field(64000, "the most CPU (millicores) one workspace may ask for", "cpu")
    max_bandwidth: int = _field(10 * 1000**3, "the most bandwidth (bits/s) one workspace may ask for", "bandwidth")
    default_max_processes: int = _field(512, "process limit of a workspace that asks for none", "int")
    max_max_processes: int = _field(32768, "the highest process limit one workspace may ask for", "int")
    # The floors: the least a workspace of any kind needs to run a program (less is refused).
    min_memory: int = _field(16 * 1024**2, "the least memory one workspace may ask for", "size")
    min_disk: int = _field(16 * 1024**2, "the least disk one workspace may ask for (its own ext4 filesystem)", "size")
    min_cpu: int = _field(10, "the least CPU (millicores) one workspace may ask for; the kernel enforces no smaller "
                          "quota", "cpu")
    min_bandwidth: int = _field(1000**2, "the least bandwidth (bits/s) one workspace may ask for", "bandwidth")
    min_max_processes: int = _field(8, "the lowest process limit one workspace may ask for", "int")
    resume_interval: dt.timedelta = _field(dt.timedelta(seconds=5), "how often unfinished creations are driven on", "duration")


@dataclasses.dataclass
class ManagerSettings(Transport):
    data_dir: pathlib.Path = _field(None, "where the manager keeps its local state", "path")
    listen: str = _field("127.0.0.1:7703", "host:port to serve on")
    advertise: str = _field("", "host:port clients use to reach this manager; empty means the listen address")
    name: str = _field("", "this manager's id (managers/<name>); empty means the host name")
    repository: str = _field("127.0.0.1:7701", "host:port of the RepositoryService")
    backend: str = _field("dynamic-accounts", "how accounts are made: dynamic-accounts or account-pool")
    account_prefix: str = _field("vws-", "prefix of dynamic account names")
    pool_prefix: str = _field("vwsp", "prefix of pool account names")
    pool_size: int = _field(8, "number of pool accounts (the manager's capacity)", "int")
    quarantine: dt.timedelta = _field(dt.timedelta(seconds=60), "how long a returned pool account rests", "duration")
    max_workspaces: int = _field(64, "the most workspaces (dynamic accounts)", "int")
    memory: int = _field(0, "memory offered to workspaces; 0 means the host's", "size")
    disk: int = _field(0, "disk offered to workspaces; 0 means the free space of the data directory", "size")
    cpu: int = _field(0, "CPU offered (millicores); 0 means every core", "cpu")
    heartbeat_interval: dt.timedelta = _field(dt.timedelta(seconds=2), "how often it tells the repository it is alive", "duration")
    cgroup_root: str = _field("/sys/fs/cgroup", "where the cgroup hierarchy is mounted")
    setup_timeout: dt.timedelta = _field(dt.timedelta(seconds=120), "a workspace's set-up script still running "
                                         "after this is killed and its create fails (DEADLINE_EXCEEDED); keep it "
                                         "below the factory's deploy deadline (300s)", "duration")
    sandboxes: bool = _field(True, "also offer SANDBOX workspaces (bubblewrap namespaces), when the host can", "bool")
    accounting_interval: dt.timedelta = _field(
        dt.timedelta(seconds=10), "how often every workspace's counters (CPU, memory, disk, network) are sampled "
        "for usage accounting; 0 turns sampling off (for comparison: Slurm samples every 30s, HTCondor every 300s)",
        "duration")
    vms: bool = _field(True, "also offer VIRTUAL_MACHINE workspaces (libvirt), when libvirtd answers", "bool")
    libvirt_uri: str = _field("qemu:///system", "libvirt connection URI (xen:///system on Xen hosts)")
    vm_domain_type: str = _field("auto", "kvm, qemu (no acceleration) or xen; auto probes whether KVM really runs guests")
    vm_orphans: str = _field("destroy", "what to do with a domain of this manager that no workspace owns: destroy or report")
    vm_shutdown_timeout: dt.timedelta = _field(dt.timedelta(seconds=20), "how long a guest has to power off on ACPI "
                                               "before it is forced off", "duration")
    vm_agent_timeout: dt.timedelta = _field(dt.timedelta(seconds=60), "how long after boot Exec waits for the "
                                            "guest agent", "duration")
    transfer_fsync: bool = _field(True, "make a file another manager sent durable (fsync) before its transfer "
                                  "completes; off only where losing it in a host crash is acceptable (benchmarks)",
                                  "bool")
    transfer_stall_timeout: dt.timedelta = _field(dt.timedelta(seconds=30), "a migration's transfer stream that "
                                                  "moves nothing for this long is taken as broken and started again "
                                                  "from the last verified chunk", "duration")
    transfer_give_up_after: dt.timedelta = _field(dt.timedelta(minutes=10), "a migration's transfer of one file "
                                                  "that has not completed after this long fails, and the migration "
                                                  "is rolled back", "duration")


SECTIONS = {"repository": RepositorySettings, "factory": FactorySettings, "manager": ManagerSettings}


def _convert(value: Any, unit: str, field: str):
    if value is None:
        return None
    if unit == "duration":
        return value if isinstance(value, dt.timedelta) else units.parse_duration(value, field)
    if unit == "size":
        return units.parse_size(value, field)
    if unit == "cpu":
        return units.parse_cpu(value, field)
    if unit == "bandwidth":
        return units.parse_bandwidth(value, field)
    if unit == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"{value!r} is not true or false", field)
    if unit == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{value!r} is not a whole number", field) from None
    if unit == "path":
        return pathlib.Path(value).expanduser()
    return str(value)


def add_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument("--config", help="TOML configuration file (default: $VWS_CONFIG, then DATA_DIR/vws.toml)")
    for f in dataclasses.fields(SECTIONS[section]):
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=f.metadata["help"])


def load(section: str, args: argparse.Namespace | dict | None = None, environ: dict | None = None):
    """Builds the settings of one service; every bad value names its setting."""
    cls = SECTIONS[section]
    environ = os.environ if environ is None else environ
    flags = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    values: dict[str, Any] = {}

    data_dir = flags.get("data_dir") or environ.get("VWS_DATA_DIR")
    config_path = flags.get("config") or environ.get("VWS_CONFIG")
    if not config_path:
        candidate = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
        if (candidate / "vws.toml").exists():
            config_path = str(candidate / "vws.toml")
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise InvalidArgument(f"{config_path} does not exist; fix --config or VWS_CONFIG", "config") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{config_path} is not valid TOML: {exc}", "config") from None
        values.update({k: v for k, v in doc.items() if k in SHARED_FIELDS})
        values.update(doc.get(section, {}))
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise InvalidArgument(f"unknown setting(s) {sorted(unknown)} in [{section}] of {config_path}; "
                              f"known: {sorted(known)}", "config")
    for name in known:
        env_name = f"VWS_{name.upper()}" if name in SHARED_FIELDS else f"VWS_{section.upper()}_{name.upper()}"
        if env_name in environ:
            values[name] = environ[env_name]
        if flags.get(name) is not None:
            values[name] = flags[name]
    kwargs = {name: _convert(v, known[name].metadata["unit"], name) for name, v in values.items()}
    settings = cls(**kwargs)
    if settings.data_dir is None:
        settings.data_dir = default_data_dir()
    if section == "manager" and not settings.name:
        host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower()).strip("-")
        settings.name = (host or "local")[:32]
    return settings


def write_run_file(data_dir: pathlib.Path, service: str, info: dict) -> pathlib.Path:
    """Records where a running service answers, so that the CLI finds it untold."""
    run = pathlib.Path(data_dir) / "run"
    run.mkdir(parents=True, exist_ok=True)
    path = run / f"{service}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}))
    os.replace(tmp, path)
    return path


def read_run_file(data_dir: pathlib.Path, service: str) -> dict | None:
    try:
        return json.loads((pathlib.Path(data_dir) / "run" / f"{service}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def remove_run_file(data_dir: pathlib.Path, service: str) -> None:
    try:
        (pathlib.Path(data_dir) / "run" / f"{service}.json").unlink()
    except FileNotFoundError:
        pass


def settings_markdown() -> str:
    """The settings as Markdown tables, for docs/operations.md (tests/unit/test_docs.py keeps them equal):
    `.venv/bin/python -c 'from vws.common import config; print(config.settings_markdown(), end="")'`."""
    def default(f) -> str:
        v, unit = f.default, f.metadata["unit"]
        if v is None or v == "":
            return ""
        if unit == "duration":
            text = units.format_duration(v)
        elif unit == "bool":
            text = str(v).lower()
        elif not v or unit not in ("size", "cpu", "bandwidth"):
            text = str(v)
        elif unit == "size":
            text = units.format_size(v)
        elif unit == "cpu":
            text = f"{v}m"
        else:  # bandwidth, in bits/s
            text = f"{v // 1000 ** 3}G" if v % 1000 ** 3 == 0 else f"{v // 1000 ** 2}M"
        return f"`{text}`"

    shared = dataclasses.fields(Transport)
    tables = [("every service", "<SERVICE>", shared)] + [
        (f"[{name}]", name.upper(), [f for f in dataclasses.fields(cls) if f not in shared])
        for name, cls in SECTIONS.items()]
    out = []
    for title, service, fields in tables:
        out += [f"Settings of {title}:", "", "| setting | default | environment | meaning |", "|---|---|---|---|"]
        out += [f"| `{f.name}` | {default(f)} | `VWS_{'' if f.name in SHARED_FIELDS else service + '_'}"
                f"{f.name.upper()}` | {html.escape(f.metadata['help'], quote=False)} |" for f in fields]
        out.append("")
    return "\n".join(out)
