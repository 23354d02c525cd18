"""Domain objects shared by the three services. The wire format lives in vws.v1; the
converters module is the only place that turns one into the other."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum


class State(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    PENDING = "PENDING"
    PROPAGATING = "PROPAGATING"
    READY = "READY"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    SUSPENDED = "SUSPENDED"
    MIGRATING = "MIGRATING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    FAILED = "FAILED"

    @property
    def is_final(self) -> bool:
        return self is State.TERMINATED

    @property
    def holds_resources(self) -> bool:
        """Whether a workspace in this state occupies capacity on its manager."""
        return self not in (State.TERMINATED, State.UNSPECIFIED)


class Kind(enum.Enum):
    UNIX_ACCOUNT = "UNIX_ACCOUNT"
    SANDBOX = "SANDBOX"
    VIRTUAL_MACHINE = "VIRTUAL_MACHINE"
    # What differs between kinds is a trait in vws.common.kinds, not a branch on these.


class EventType(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    CREATED = "CREATED"
    PLACED = "PLACED"
    STATE_CHANGED = "STATE_CHANGED"
    TERMINATION_TIME_CHANGED = "TERMINATION_TIME_CHANGED"
    RECONCILED = "RECONCILED"
    LIMIT_REACHED = "LIMIT_REACHED"
    MIGRATED = "MIGRATED"


class Action(enum.Enum):
    """The state-changing operations a manager performs, with their legal moves."""
    START = "start"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    SUSPEND = "suspend"
    REBOOT = "reboot"
    DESTROY = "destroy"


# A create not yet ended well, in these: a retry with its request_id, or the factory's resume
# loop, drives it on (a manager's crash mid-deploy leaves it FAILED, with nothing on the host).
UNFINISHED: tuple[State, ...] = (State.PENDING, State.PROPAGATING, State.FAILED)

# The states a workspace may migrate from; it arrives in the same state.
MIGRATABLE: frozenset[State] = frozenset({State.READY, State.RUNNING, State.PAUSED, State.SUSPENDED})

# action -> (states it may start from, state it ends in)
TRANSITIONS: dict[Action, tuple[frozenset[State], State]] = {
    Action.START: (frozenset({State.READY}), State.RUNNING),
    Action.STOP: (frozenset({State.RUNNING, State.PAUSED, State.SUSPENDED}), State.READY),
    Action.PAUSE: (frozenset({State.RUNNING}), State.PAUSED),
    Action.RESUME: (frozenset({State.PAUSED, State.SUSPENDED}), State.RUNNING),
    Action.SUSPEND: (frozenset({State.RUNNING, State.PAUSED}), State.SUSPENDED),
    Action.REBOOT: (frozenset({State.RUNNING}), State.RUNNING),
    Action.DESTROY: (frozenset(set(State) - {State.TERMINATED, State.UNSPECIFIED}), State.TERMINATED),
}


@dataclasses.dataclass
class Resources:
    memory_bytes: int = 0
    disk_bytes: int = 0
    cpu_millis: int = 0
    network_bits_per_second: int = 0
    max_processes: int = 0


@dataclasses.dataclass
class Enforcement:
    """The limits a manager put in place on its host for one workspace."""
    mechanism: str = ""
    memory_limit_bytes: int = 0
    cpu_quota_micros: int = 0
    cpu_period_micros: int = 0
    disk_bytes: int = 0
    disk_mount: str = ""
    network_bits_per_second: int = 0
    max_processes: int = 0
    cgroup: str = ""


@dataclasses.dataclass
class Usage:
    """What a workspace has used, from its manager's counter samples."""
    name: str
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    cpu_seconds: float = 0.0
    memory_current_bytes: int = 0
    memory_peak_bytes: int = 0
    memory_byte_seconds: float = 0.0
    disk_used_bytes: int = 0
    network_rx_bytes: int = 0
    network_tx_bytes: int = 0
    seconds_at_memory_limit: float = 0.0
    seconds_at_cpu_limit: float = 0.0
    oom_kills: int = 0
    samples: int = 0
    final: bool = False
    wall_seconds: float = 0.0


@dataclasses.dataclass
class StagedFile:
    path: str
    content: bytes = b""
    mode: int = 0o644


@dataclasses.dataclass
class Software:
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    setup_script: str = ""
    files: list[StagedFile] = dataclasses.field(default_factory=list)
    image: str = ""
    unix_group: str = ""  # set from the site's policy only (Customisation.unix_group)


@dataclasses.dataclass
class WorkspaceSpec:
    kind: Kind = Kind.UNIX_ACCOUNT
    software: Software = dataclasses.field(default_factory=Software)
    resources: Resources = dataclasses.field(default_factory=Resources)
    lifetime: dt.timedelta | None = None
    start_on_create: bool = True


@dataclasses.dataclass
class Endpoint:
    workspace: str = ""
    manager: str = ""
    manager_address: str = ""
    host_identity: str = ""


@dataclasses.dataclass
class Progress:
    """How far a long piece of work (an image copy) has got."""
    activity: str = ""
    done_bytes: int = 0
    total_bytes: int = 0
    bytes_per_second: float = 0.0
    update_time: dt.datetime | None = None


@dataclasses.dataclass
class Customisation:
    """What the site's policy added to a workspace from its owner's identity and attributes."""
    rule: str = ""
    quota_group: str = ""
    account_pool: str = ""
    unix_group: str = ""
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    image: str = ""


@dataclasses.dataclass
class Workspace:
    name: str
    spec: WorkspaceSpec
    state: State = State.PENDING
    state_message: str = ""
    endpoint: Endpoint = dataclasses.field(default_factory=Endpoint)
    owner: str = ""
    create_time: dt.datetime | None = None
    update_time: dt.datetime | None = None
    termination_time: dt.datetime | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    request_id: str = ""
    enforcement: Enforcement | None = None
    progress: Progress | None = None
    customisation: Customisation | None = None

    @property
    def account_pool(self) -> str:
        """The account pool the site's policy puts it in: only managers of that pool take it."""
        return self.customisation.account_pool if self.customisation is not None else ""


@dataclasses.dataclass
class Event:
    name: str
    type: EventType
    time: dt.datetime
    previous_state: State
    state: State
    message: str = ""
    source: str = ""


@dataclasses.dataclass
class Capacity:
    """A manager's room, or what workspaces take of it. A zero memory, disk or cpu capacity
    sets no limit; a zero count of workspaces admits none."""
    workspaces: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    cpu_millis: int = 0

    @classmethod
    def of(cls, spec: WorkspaceSpec) -> Capacity:
        """What one workspace of this spec takes."""
        r = spec.resources
        return cls(1, r.memory_bytes, r.disk_bytes, r.cpu_millis)

    def plus(self, other: Capacity) -> Capacity:
        return Capacity(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def minus(self, other: Capacity) -> Capacity:
        return Capacity(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def short(self, used: Capacity, need: Capacity) -> list[str]:
        """What `need` finds no room for in this capacity beside `used`, of "workspaces",
        "memory", "disk" and "cpu" in that order; [] when it fits."""
        rows = (("workspaces", self.workspaces, used.workspaces, need.workspaces),
                ("memory", self.memory_bytes, used.memory_bytes, need.memory_bytes),
                ("disk", self.disk_bytes, used.disk_bytes, need.disk_bytes),
                ("cpu", self.cpu_millis, used.cpu_millis, need.cpu_millis))
        return [label for label, total, taken, wanted in rows
                if (total or label == "workspaces") and taken + wanted > total]


class ManagerState(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    AVAILABLE = "AVAILABLE"
    UNREACHABLE = "UNREACHABLE"


@dataclasses.dataclass
class ManagerInfo:
    name: str
    address: str
    kinds: list[Kind] = dataclasses.field(default_factory=list)
    backend: str = ""
    capacity: Capacity = dataclasses.field(default_factory=Capacity)
    allocated: Capacity = dataclasses.field(default_factory=Capacity)
    state: ManagerState = ManagerState.UNSPECIFIED
    register_time: dt.datetime | None = None
    heartbeat_time: dt.datetime | None = None
    heartbeat_interval: dt.timedelta = dt.timedelta(seconds=2)
    account_pool: str = ""  # the pool it leases accounts from (its pool prefix); "" for none
    identity: str = ""  # the certificate it registered with (the repository's record)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ImageBoot(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    KERNEL = "KERNEL"
    DISK = "DISK"


class ImageVisibility(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    PRIVATE = "PRIVATE"
    PUBLIC = "PUBLIC"


class FileRole(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    KERNEL = "KERNEL"
    INITRD = "INITRD"
    DISK = "DISK"


class FileFormat(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    RAW = "RAW"
    QCOW2 = "QCOW2"


@dataclasses.dataclass
class ImageFile:
    role: FileRole
    format: FileFormat = FileFormat.RAW
    size_bytes: int = 0
    digest: str = ""      # blake3-4m:<hex> (vws.native.copysum)
    location: str = ""    # in the repository's image store (a source path on creation)


@dataclasses.dataclass
class Image:
    name: str             # images/{id}
    boot: ImageBoot = ImageBoot.UNSPECIFIED
    files: list[ImageFile] = dataclasses.field(default_factory=list)
    size_bytes: int = 0
    owner: str = ""
    visibility: ImageVisibility = ImageVisibility.PRIVATE
    kernel_args: str = ""
    description: str = ""
    create_time: dt.datetime | None = None
    guest_agent: bool = True

    def file(self, role: FileRole) -> ImageFile | None:
        return next((f for f in self.files if f.role is role), None)

    @property
    def image_id(self) -> str:
        return self.name.split("/", 1)[1] if "/" in self.name else self.name
