"""Admission checks: every field of a create request, each bad one named with its fix.

The factory collects every violation before answering, so a client learns all that is wrong
with a request in one round trip."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

from vws.common import errors, model, units
from vws.common.config import FactorySettings

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_.-]{0,63}$")
OWNER = re.compile(r"^[A-Za-z0-9_.@=/, -]{1,256}$")
MAX_LABELS = 64
MAX_ENV = 256
MAX_ENV_VALUE = 32 * 1024
MAX_SCRIPT = 256 * 1024
MAX_FILES = 64
MAX_FILE_BYTES = 4 * 1024 * 1024
IMPLEMENTED = frozenset({model.Kind.UNIX_ACCOUNT, model.Kind.SANDBOX})
NOT_YET = {model.Kind.VIRTUAL_MACHINE: "virtual-machine workspaces are not implemented at this site yet"}


@dataclasses.dataclass
class Limits:
    defaults: model.Resources
    maxima: model.Resources
    default_lifetime: dt.timedelta
    max_lifetime: dt.timedelta

    @classmethod
    def from_settings(cls, s: FactorySettings) -> "Limits":
        return cls(model.Resources(s.default_memory, s.default_disk, s.default_cpu, s.default_bandwidth,
                                   s.default_max_processes),
                   model.Resources(s.max_memory, s.max_disk, s.max_cpu, s.max_bandwidth, s.max_max_processes),
                   s.default_lifetime, s.max_lifetime)


_RESOURCES = (  # field, unit formatter, example
    ("memory_bytes", units.format_size, "512M"),
    ("disk_bytes", units.format_size, "10G"),
    ("cpu_millis", lambda v: f"{v}m", "500m"),
    ("network_bits_per_second", lambda v: f"{v} bit/s", "100M"),
    ("max_processes", lambda v: f"{v} processes", "512"),
)


def check_request_id(request_id: str) -> None:
    if request_id and not REQUEST_ID.match(request_id):
        raise errors.InvalidArgument(
            f"{request_id[:40]!r} is not a request id; use up to 128 letters, digits, '.', '_', ':' or '-' "
            "(a UUID is a good choice)", "request_id")


def admit(workspace: model.Workspace, limits: Limits, kind_known: bool = True) -> model.Workspace:
    """Returns the workspace with defaults filled in; raises InvalidArgument listing every bad
    field, or UNIMPLEMENTED for a kind this site does not realise yet."""
    v: list[tuple[str, str]] = []
    spec = workspace.spec
    if workspace.name:
        v.append(("workspace.name", "is output only; leave it empty, the factory names the workspace"))
    if not kind_known or spec.kind is None:
        v.append(("workspace.spec.kind", "is not a kind this contract knows; use UNIX_ACCOUNT, SANDBOX or "
                  "VIRTUAL_MACHINE (account, sandbox or vm on the command line)"))
    if workspace.owner and not OWNER.match(workspace.owner):
        v.append(("workspace.owner", "holds characters an identity may not have"))

    res = dataclasses.replace(spec.resources)
    for field, fmt, example in _RESOURCES:
        value = getattr(res, field)
        path = f"workspace.spec.resources.{field}"
        maximum = getattr(limits.maxima, field)
        if value < 0:
            v.append((path, f"is negative ({value}); give a positive amount like {example}, or 0 for the default"))
        elif value > maximum:
            v.append((path, f"{fmt(value)} is over this site's maximum of {fmt(maximum)}"))
        elif value == 0 and (field != "network_bits_per_second" or (spec.kind and spec.kind.has_own_network)):
            # (a workspace without a network of its own gets no default bandwidth: nothing could shape it)
            setattr(res, field, getattr(limits.defaults, field))

    lifetime = spec.lifetime
    if lifetime is None or lifetime == dt.timedelta(0):
        lifetime = limits.default_lifetime
    elif lifetime < dt.timedelta(0):
        v.append(("workspace.spec.lifetime", "is negative; give a duration like 2h, or none for the default "
                  f"({units.format_duration(limits.default_lifetime)})"))
    elif lifetime < dt.timedelta(seconds=1):
        v.append(("workspace.spec.lifetime", "is under one second; give a duration like 2h"))
    elif lifetime > limits.max_lifetime:
        v.append(("workspace.spec.lifetime", f"{units.format_duration(lifetime)} is over this site's maximum of "
                  f"{units.format_duration(limits.max_lifetime)}"))

    sw = spec.software
    if len(sw.environment) > MAX_ENV:
        v.append(("workspace.spec.software.environment", f"has {len(sw.environment)} variables; at most {MAX_ENV}"))
    for key, value in sw.environment.items():
        path = f"workspace.spec.software.environment[{key}]"
        if not ENV_NAME.match(key):
            v.append((path, f"{key!r} is not a variable name; use letters, digits and '_', not starting with a digit"))
        elif "\0" in value or len(value) > MAX_ENV_VALUE:
            v.append((path, f"the value must hold no NUL byte and at most {MAX_ENV_VALUE} characters"))
    if len(sw.setup_script.encode()) > MAX_SCRIPT:
        v.append(("workspace.spec.software.setup_script", f"is over {units.format_size(MAX_SCRIPT)}; stage a "
                  "file and run it instead"))
    if "\0" in sw.setup_script:
        v.append(("workspace.spec.software.setup_script", "holds a NUL byte"))
    if len(sw.files) > MAX_FILES:
        v.append(("workspace.spec.software.files", f"has {len(sw.files)} files; at most {MAX_FILES}"))
    seen: set[str] = set()
    for i, f in enumerate(sw.files):
        path = f"workspace.spec.software.files[{i}]"
        parts = f.path.split("/")
        if not f.path or f.path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in f.path:
            v.append((path + ".path", f"{f.path!r} must be a relative path inside the home directory, "
                      "like bin/run.sh (no '..', no leading '/')"))
        elif f.path in seen:
            v.append((path + ".path", f"{f.path!r} is staged twice"))
        seen.add(f.path)
        if not 0 <= f.mode <= 0o7777:
            v.append((path + ".mode", f"{f.mode:o} is not a file mode; use e.g. 0644 or 0755"))
        elif f.mode & 0o6000:
            v.append((path + ".mode", "set-uid and set-gid bits are not allowed"))
        if len(f.content) > MAX_FILE_BYTES:
            v.append((path + ".content", f"is over {units.format_size(MAX_FILE_BYTES)}"))
    if sw.image and spec.kind is not model.Kind.VIRTUAL_MACHINE:
        v.append(("workspace.spec.software.image", "only virtual-machine workspaces boot an image; leave it empty"))

    if len(workspace.labels) > MAX_LABELS:
        v.append(("workspace.labels", f"has {len(workspace.labels)} labels; at most {MAX_LABELS}"))
    for key, value in workspace.labels.items():
        if not LABEL_KEY.match(key):
            v.append((f"workspace.labels[{key}]", "a label key is 1-63 lower-case letters, digits, '_', '.' or '-', "
                      "starting with a letter"))
        elif not LABEL_VALUE.match(value):
            v.append((f"workspace.labels[{key}]", f"{value!r}: a label value is up to 63 lower-case letters, "
                      "digits, '_', '.' or '-'"))
    if v:
        raise errors.InvalidArgument(v)
    if spec.kind not in IMPLEMENTED:
        raise errors.Unimplemented(NOT_YET[spec.kind] + "; ask for kind account or sandbox")
    new_spec = dataclasses.replace(spec, resources=res, lifetime=lifetime,
                                   software=dataclasses.replace(sw, files=list(sw.files)))
    return dataclasses.replace(workspace, spec=new_spec, labels=dict(workspace.labels))
