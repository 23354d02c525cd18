"""Admission checks: every field of a create request, each bad one named with its fix.

The factory collects every violation before answering, so a client learns all that is wrong
with a request in one round trip."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re

from ..common import errors, kinds, model, names, units
from ..common.config import FactorySettings

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# The factory's own request ids, for creates sent without one: no client can retry them.
AUTO_REQUEST_ID = "auto-"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
LABEL_KEY = re.compile(rf"^[a-z][a-z0-9_.-]{{0,{names.MAX_LABEL_KEY - 1}}}$")
LABEL_VALUE = re.compile(rf"^[a-z0-9_.-]{{0,{names.MAX_LABEL_VALUE}}}$")
OWNER = re.compile(r"^[A-Za-z0-9_.@=/, -]{1,256}$")
MAX_LABELS = names.MAX_LABELS
# The largest environment (128 variables of 4 KiB, about 530 KiB as the exec path passes it) leaves
# every program most of the kernel's argument limit (ARG_MAX, 2 MiB with an 8 MiB stack).
MAX_ENV = 128
MAX_ENV_VALUE = 4 * 1024
# Names the manager's exec path uses for its own variables (vws.manager.backends.account.programs).
RESERVED_ENV_PREFIXES = names.RESERVED_ENV_PREFIXES
ENV_ROOM = "so that the environment leaves every program room under the kernel's argument limit"
MAX_SCRIPT = 256 * 1024
MAX_FILES = 64
MAX_FILE_BYTES = 4 * 1024 * 1024
NAME_MAX = 255  # bytes in one component of a path (ext4, xfs)
MAX_PATH = 1024  # bytes in a staged file's path: with the home's path, well within the kernel's PATH_MAX
BLOCK = 4096  # what a file or directory takes at least on the workspace's filesystem
# What the manager writes into the home of a workspace with an environment
# (vws.manager.backends.account.provisioning): a staged file may not stand where these must.
ENVIRONMENT_FILES = (".vws/environment.sh", ".profile")
# The kernel's limits on what one execve carries (argv and environment together, and each string).
ARG_MAX = os.sysconf("SC_ARG_MAX") if "SC_ARG_MAX" in os.sysconf_names else 2 * 1024 ** 2
MAX_ARG_STRLEN = 128 * 1024
IMAGE_FIELD = "workspace.spec.software.image"
NEEDS_IMAGE = "virtual machines boot an image; give one, e.g. --image busybox (`vws image list` shows them)"


_RESOURCES = (  # field, its settings' suffix (min_, default_, max_), unit formatter, example
    ("memory_bytes", "memory", units.format_size, "512M"),
    ("disk_bytes", "disk", units.format_size, "10G"),
    ("cpu_millis", "cpu", lambda v: f"{v}m", "500m"),
    ("network_bits_per_second", "bandwidth", lambda v: f"{v} bit/s", "100M"),
    ("max_processes", "max_processes", lambda v: f"{v} processes", "512"),
)


@dataclasses.dataclass
class Limits:
    defaults: model.Resources
    maxima: model.Resources
    default_lifetime: dt.timedelta
    max_lifetime: dt.timedelta
    minima: model.Resources = dataclasses.field(default_factory=model.Resources)  # the site's floors

    @classmethod
    def from_settings(cls, s: FactorySettings) -> "Limits":
        """InvalidArgument naming the setting when a default is under its floor or over its maximum."""
        def of(prefix: str) -> model.Resources:
            return model.Resources(**{field: getattr(s, f"{prefix}_{setting}") for field, setting, _, _ in _RESOURCES})
        low, default, high = of("min"), of("default"), of("max")
        for field, setting, fmt, _ in _RESOURCES:
            if not getattr(low, field) <= getattr(default, field) <= getattr(high, field):
                raise errors.InvalidArgument(
                    f"{fmt(getattr(default, field))} must lie between min_{setting} ({fmt(getattr(low, field))}) and "
                    f"max_{setting} ({fmt(getattr(high, field))}); change one of them", f"default_{setting}")
        return cls(default, high, s.default_lifetime, s.max_lifetime, low)


def fit_image(admitted: model.Workspace, asked: model.Resources, image: model.Image | None,
              limits: Limits) -> model.Workspace:
    """A virtual machine's image, as the repository has it (None: not there): the owner must be
    allowed to boot it (NOT_FOUND otherwise, the same answer as for a missing one, so that a
    private image of someone else is not disclosed), and the disk must hold the image's raw
    disk (the default disk is raised to it; an explicit smaller one is refused). A qcow2 disk's
    virtual size is checked by the manager."""
    name = admitted.spec.software.image
    if image is None or (image.visibility is not model.ImageVisibility.PUBLIC and image.owner != admitted.owner):
        raise errors.NotFound(f"{IMAGE_FIELD}: image {name} does not exist or is not yours to boot; "
                              "`vws image list` shows the images you may boot")
    disk = image.file(model.FileRole.DISK) if image.boot is model.ImageBoot.DISK else None
    res = admitted.spec.resources
    if disk is None or disk.format is not model.FileFormat.RAW or res.disk_bytes >= disk.size_bytes:
        return admitted
    need = -(-disk.size_bytes // 2**20) * 2**20  # whole MiB
    path = "workspace.spec.resources.disk_bytes"
    if need > limits.maxima.disk_bytes:
        raise errors.InvalidArgument(f"image {name} has a {units.format_size(need)} disk, over this site's maximum "
                                     f"disk of {units.format_size(limits.maxima.disk_bytes)}", path)
    if asked.disk_bytes:
        raise errors.InvalidArgument(f"{units.format_size(res.disk_bytes)} is smaller than the disk of image {name} "
                                     f"({units.format_size(need)}); give at least that much, e.g. --disk "
                                     f"{units.format_size(need)}, or none for the image's size", path)
    spec = dataclasses.replace(admitted.spec, resources=dataclasses.replace(res, disk_bytes=need))
    return dataclasses.replace(admitted, spec=spec)


def floors(limits: Limits, kind: model.Kind | None) -> model.Resources:
    """The site's floors, raised to what a workspace of the kind needs to run a program."""
    least = dataclasses.replace(limits.minima)
    if implemented(kind):
        traits = kinds.of(kind)
        least.memory_bytes = max(least.memory_bytes, traits.least_memory_bytes)
        least.cpu_millis = max(least.cpu_millis, traits.least_cpu_millis)
    return least


def implemented(kind: model.Kind | None) -> bool:
    """Every kind the kinds table describes is realised by a plug-in."""
    return kind in kinds.TABLE


def boots_image(kind: model.Kind | None) -> bool:
    return implemented(kind) and kinds.of(kind).boots_image


def _either(words) -> str:
    *rest, last = words
    return f"{', '.join(rest)} or {last}" if rest else last


def check_request_id(request_id: str) -> None:
    if request_id and not REQUEST_ID.match(request_id):
        raise errors.InvalidArgument(
            f"{errors.quote(request_id)} is not a request id; use up to 128 letters, digits, '.', '_', ':' or '-' "
            "(a UUID is a good choice)", "request_id")
    if request_id.startswith(AUTO_REQUEST_ID):
        raise errors.InvalidArgument(
            f"{errors.quote(request_id)} starts {AUTO_REQUEST_ID!r}, which marks the ids the factory gives creates "
            "sent without one; choose another (a UUID is a good choice)", "request_id")


def exec_strings(environment: dict[str, str]) -> list[str]:
    """The strings the manager's exec path hands the kernel for a workspace's environment: each
    variable travels as VWSENV_<i>=NAME=value (vws.manager.backends.account.programs)."""
    return [f"VWSENV_{i}={k}={v}" for i, (k, v) in enumerate(environment.items())]


def exec_bytes(strings: list[str]) -> int:
    """What the strings take of ARG_MAX: each with its NUL and its pointer."""
    return sum(len(s.encode()) + 1 + 8 for s in strings)


def relative_path(path: str) -> bool:
    """A path inside the home: relative, with no empty, '.' or '..' component, no NUL."""
    return bool(path) and not path.startswith("/") and "\0" not in path \
        and not any(p in ("", ".", "..") for p in path.split("/"))


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def check_files(sw: model.Software, disk_bytes: int) -> list[tuple[str, str]]:
    """What the manager could not stage: a name the filesystem cannot hold, a file where a
    directory must be, more than the disk holds."""
    v: list[tuple[str, str]] = []
    files = {f.path: i for i, f in enumerate(sw.files) if relative_path(f.path)}  # the others are named already
    made = {p: None for p in ENVIRONMENT_FILES} if sw.environment else {}
    directories: dict[str, str] = {}  # directory -> the path that needs it
    for path in [*files, *made]:
        parts = path.split("/")
        for n in range(1, len(parts)):
            directories.setdefault("/".join(parts[:n]), path)
    for path, i in files.items():
        field = f"workspace.spec.software.files[{i}].path"
        size = len(path.encode())
        too_long = [p for p in path.split("/") if len(p.encode()) > NAME_MAX]
        if size > MAX_PATH:
            v.append((field, f"is {size} bytes long; a staged file's path is at most {MAX_PATH} bytes"))
        elif too_long:
            v.append((field, f"has a name of {len(too_long[0].encode())} bytes ({too_long[0][:20]!r}...); a file "
                      f"or directory name is at most {NAME_MAX} bytes: shorten it"))
        elif path in directories:
            needs = directories[path]
            v.append((field, f"{path[:60]!r} must be a directory to hold "
                      + (f"{needs[:60]!r} (files[{files[needs]}])" if needs in files else
                         f"{needs!r}, which vws writes for the environment")
                      + "; stage it under another name"))
    for path in made:
        if path in directories:  # a staged a/b where vws writes the file a
            needs = directories[path]
            v.append((f"workspace.spec.software.files[{files[needs]}].path",
                      f"{path!r} is a file vws writes for the environment, not a directory; stage "
                      f"{needs[:60]!r} elsewhere"))
    need = sum(_blocks(len(f.content)) for f in sw.files) + _blocks(len(sw.setup_script.encode())) \
        + BLOCK * len(directories)
    if disk_bytes > 0 and need > disk_bytes:
        v.append(("workspace.spec.software.files", f"the staged files and set-up script take "
                  f"{units.format_size(need)} on disk, more than the {units.format_size(disk_bytes)} disk asked "
                  "for; ask for a larger disk (workspace.spec.resources.disk_bytes) or stage less"))
    return v


def check_exec_room(environment: dict[str, str]) -> list[tuple[str, str]]:
    """The environment travels with every program the workspace runs (the set-up script and
    every Exec): it must leave the kernel's argument limit room for them."""
    strings = exec_strings(environment)
    v = [(f"workspace.spec.software.environment[{k}]", f"is {len(s.encode())} bytes as the exec path passes it "
          f"(VWSENV_<i>=NAME=value); the kernel takes at most {MAX_ARG_STRLEN} bytes in one string")
         for k, s in zip(environment, strings) if len(s.encode()) + 1 > MAX_ARG_STRLEN]
    size, room = exec_bytes(strings), ARG_MAX // 2
    if size > room:
        v.append(("workspace.spec.software.environment", f"takes {units.format_size(size)} as every program "
                  f"receives it; at most {units.format_size(room)} (half the kernel's argument limit ARG_MAX of "
                  f"{units.format_size(ARG_MAX)}, the other half is each program's own): shorten it, or stage "
                  "a file with the values and read it"))
    return v


# What a guest agent's command holds besides the environment (the program, PATH and HOME, the
# JSON around them), counted generously so that what admission takes the manager takes too.
AGENT_COMMAND_OVERHEAD = 1024


def check_agent_room(environment: dict[str, str], command_bytes: int) -> list[tuple[str, str]]:
    """Where programs start through a guest agent (command_bytes: the most one command holds), the
    environment travels in every command as JSON: it may take half, the rest is the program's."""
    if not command_bytes or not environment:
        return []
    size = len(json.dumps([f"{k}={v}" for k, v in environment.items()], ensure_ascii=False)
               .encode("utf-8", "surrogatepass")) + AGENT_COMMAND_OVERHEAD
    room = command_bytes // 2
    if size <= room:
        return []
    return [("workspace.spec.software.environment", f"takes about {units.format_size(size)} in the guest agent's "
             f"command of every program; at most {units.format_size(room)} (half the {units.format_size(command_bytes)} "
             "the agent takes in one, control characters 6 bytes each): shorten it, or stage a file with the "
             "values and read it")]


def admit(workspace: model.Workspace, limits: Limits, kind_known: bool = True) -> model.Workspace:
    """Returns the workspace with defaults filled in; raises InvalidArgument listing every bad
    field, or UNIMPLEMENTED for a kind this site does not realise yet."""
    v: list[tuple[str, str]] = []
    spec = workspace.spec
    if workspace.name:
        v.append(("workspace.name", "is output only; leave it empty, the factory names the workspace"))
    if not kind_known or spec.kind is None:
        v.append(("workspace.spec.kind", "is not a kind this contract knows; use "
                  f"{_either(k.value for k in kinds.TABLE)} ({_either(kinds.names())} on the command line)"))
    if workspace.owner and not OWNER.match(workspace.owner):
        v.append(("workspace.owner", "holds characters an identity may not have"))

    res = dataclasses.replace(spec.resources)
    least = floors(limits, spec.kind)
    for field, _, fmt, example in _RESOURCES:
        value = getattr(res, field)
        path = f"workspace.spec.resources.{field}"
        maximum, floor = getattr(limits.maxima, field), getattr(least, field)
        if value < 0:
            v.append((path, f"is negative ({value}); give a positive amount like {example}, or 0 for the default"))
        elif value > maximum:
            v.append((path, f"{fmt(value)} is over this site's maximum of {fmt(maximum)}"))
        elif 0 < value < floor:
            v.append((path, f"{fmt(value)} is under this site's minimum of {fmt(floor)}, the least a "
                      f"{kinds.name_of(spec.kind)} workspace needs to run a program; ask for at least {fmt(floor)}, "
                      "or 0 for the default"))
        elif value == 0 and (field != "network_bits_per_second"
                             or (implemented(spec.kind) and kinds.of(spec.kind).own_network)):
            # (a workspace without a network of its own gets no default bandwidth: nothing could shape it)
            setattr(res, field, max(getattr(limits.defaults, field), floor))

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
        v.append(("workspace.spec.software.environment", f"has {len(sw.environment)} variables; at most {MAX_ENV}, "
                  f"{ENV_ROOM}: stage a file with the rest and read it"))
    for key, value in sw.environment.items():
        path = f"workspace.spec.software.environment[{key}]"
        if not ENV_NAME.match(key):
            v.append((path, f"{key!r} is not a variable name; use letters, digits and '_', not starting with a digit"))
        elif key.startswith(RESERVED_ENV_PREFIXES):
            v.append((path, f"names starting {' or '.join(RESERVED_ENV_PREFIXES)} are reserved for vws's exec path; "
                      "choose another name"))
        elif "\0" in value:
            v.append((path, "the value holds a NUL byte, which no environment can carry"))
        elif len(value) > MAX_ENV_VALUE:
            v.append((path, f"the value has {len(value)} characters; at most {MAX_ENV_VALUE}, {ENV_ROOM}: stage a "
                      "file with it and read it"))
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
        if not relative_path(f.path):
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
    v += check_files(sw, res.disk_bytes)
    v += check_exec_room(sw.environment)
    if implemented(spec.kind):
        v += check_agent_room(sw.environment, kinds.of(spec.kind).command_bytes)
    image = sw.image
    if boots_image(spec.kind):
        if not image:
            v.append((IMAGE_FIELD, NEEDS_IMAGE))
        else:
            try:
                image = names.image_name(names.parse_image_name(image, IMAGE_FIELD))
            except errors.InvalidArgument as exc:
                v += exc.violations
    elif image:
        v.append((IMAGE_FIELD, "only virtual-machine workspaces boot an image; leave it empty (or ask for kind "
                  f"{kinds.name_of(kinds.default(image=True))})"))
    if implemented(spec.kind) and not kinds.of(spec.kind).accepts_setup:
        if sw.setup_script:
            v.append(("workspace.spec.software.setup_script", "is not supported for virtual machines yet; leave it "
                      "empty and run the script with `vws exec` once the workspace is RUNNING"))
        if sw.files:
            v.append(("workspace.spec.software.files", "staging files is not supported for virtual machines yet; "
                      "leave them out and copy them in with `vws exec` once the workspace is RUNNING"))

    if len(workspace.labels) > MAX_LABELS:
        v.append(("workspace.labels", f"has {len(workspace.labels)} labels; at most {MAX_LABELS}"))
    for key, value in workspace.labels.items():
        if len(key) > names.MAX_LABEL_KEY:  # before its form, and never in a field path: a key may be megabytes
            v.append(("workspace.labels", f"has a key of {len(key)} characters ({errors.quote(key)}); a label key is "
                      f"at most {names.MAX_LABEL_KEY}: shorten it"))
        elif not LABEL_KEY.match(key):
            v.append((f"workspace.labels[{key}]", f"a label key is 1-{names.MAX_LABEL_KEY} lower-case letters, "
                      "digits, '_', '.' or '-', starting with a letter"))
        elif not LABEL_VALUE.match(value):
            v.append((f"workspace.labels[{key}]", f"{errors.quote(value)}: a label value is up to "
                      f"{names.MAX_LABEL_VALUE} lower-case letters, digits, '_', '.' or '-'"))
    if v:
        raise errors.InvalidArgument(v)
    if not implemented(spec.kind):
        raise errors.Unimplemented(f"{kinds.name_of(spec.kind)} workspaces are not implemented at this site yet; "
                                   "ask for another kind")
    new_spec = dataclasses.replace(spec, resources=res, lifetime=lifetime,
                                   software=dataclasses.replace(sw, files=list(sw.files), image=image))
    return dataclasses.replace(workspace, spec=new_spec, labels=dict(workspace.labels))
