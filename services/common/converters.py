"""The one place where protobuf messages become domain objects and back."""
from __future__ import annotations

import dataclasses
import datetime as dt

from google.protobuf import duration_pb2, timestamp_pb2

from . import errors, model
from .auth.gate import Caller
from .auth.principal import CredentialKind, Principal
from ..v1 import access_pb2, image_pb2
from ..v1 import workspace_pb2 as pb

_STATE_TO_PB = {s: pb.Workspace.State.Value(f"STATE_{s.value}") for s in model.State}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}
_KIND_TO_PB = {k: pb.WorkspaceSpec.Kind.Value(f"KIND_{k.value}") for k in model.Kind}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}
_EVENT_TO_PB = {e: pb.WorkspaceEvent.Type.Value(f"TYPE_{e.value}") for e in model.EventType}
_EVENT_FROM_PB = {v: k for k, v in _EVENT_TO_PB.items()}
_MSTATE_TO_PB = {s: pb.Manager.State.Value(f"STATE_{s.value}") for s in model.ManagerState}


def state_to_pb(state: model.State) -> int:
    return _STATE_TO_PB[state]


def state_from_pb(value: int) -> model.State:
    return _STATE_FROM_PB.get(value, model.State.UNSPECIFIED)


def kind_to_pb(kind: model.Kind | None) -> int:
    return _KIND_TO_PB[kind] if kind else pb.WorkspaceSpec.KIND_UNSPECIFIED


def kind_from_pb(value: int) -> model.Kind | None:
    """None for KIND_UNSPECIFIED or a value this build does not know."""
    return _KIND_FROM_PB.get(value)


def event_type_to_pb(t: model.EventType) -> int:
    return _EVENT_TO_PB[t]


def event_type_from_pb(value: int) -> model.EventType:
    return _EVENT_FROM_PB.get(value, model.EventType.UNSPECIFIED)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def ts_to_pb(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A naive `value` is local time. By arithmetic on the epoch: Timestamp.FromDatetime's
    calendar walk cost a create's conversions about half their time."""
    if value is None:
        return None
    since = (value if value.tzinfo is not None else value.astimezone(dt.timezone.utc)) - _EPOCH
    return timestamp_pb2.Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


# google.protobuf.Timestamp's range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z (datetime's too).
_TS_SECONDS = (-62135596800, 253402300799)
_TS_RANGE = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z (nanos 0 to 999999999)"
# Every duration of the API is added to a time: bounded so that the sum stays a time for a
# thousand years either way (google.protobuf.Duration's own bound, 10,000 years, does not).
MAX_DURATION_SECONDS = 1000 * 31_557_600  # a thousand years of 365.25 days
_DURATION_RANGE = (f"-{MAX_DURATION_SECONDS}s to {MAX_DURATION_SECONDS}s (a thousand years), nanos of the "
                   "seconds' sign and under 1000000000")


def ts_from_pb(msg, field: str, path: str | None = None) -> dt.datetime | None:
    """path: the field's path in the request, for the error (default: field)."""
    if not msg.HasField(field):
        return None
    ts = getattr(msg, field)
    if not (_TS_SECONDS[0] <= ts.seconds <= _TS_SECONDS[1] and 0 <= ts.nanos <= 999_999_999):
        raise errors.InvalidArgument(f"seconds {ts.seconds}, nanos {ts.nanos} is out of range; give a time "
                                     f"from {_TS_RANGE}", path or field)
    return _EPOCH + dt.timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)


def duration_to_pb(value: dt.timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(value)
    return d


def duration_from_pb(msg, field: str, path: str | None = None) -> dt.timedelta | None:
    """path: the field's path in the request, for the error (default: field)."""
    if not msg.HasField(field):
        return None
    d = getattr(msg, field)
    if not (abs(d.seconds) <= MAX_DURATION_SECONDS and abs(d.nanos) <= 999_999_999
            and (d.seconds == 0 or d.nanos == 0 or (d.seconds < 0) == (d.nanos < 0))):
        raise errors.InvalidArgument(f"seconds {d.seconds}, nanos {d.nanos} is out of range; give a duration "
                                     f"from {_DURATION_RANGE}", path or field)
    return d.ToTimedelta()


def enforcement_to_pb(e: model.Enforcement) -> pb.Enforcement:
    return pb.Enforcement(**dataclasses.asdict(e))


def enforcement_from_pb(m: pb.Enforcement) -> model.Enforcement:
    return model.Enforcement(**{f.name: getattr(m, f.name) for f in dataclasses.fields(model.Enforcement)})


_USAGE_TIMES = ("start_time", "end_time")


_USAGE_VALUES = tuple(f.name for f in dataclasses.fields(model.Usage) if f.name not in _USAGE_TIMES)


def usage_to_pb(u: model.Usage) -> pb.WorkspaceUsage:
    msg = pb.WorkspaceUsage(**{k: getattr(u, k) for k in _USAGE_VALUES})
    for field in _USAGE_TIMES:
        if getattr(u, field) is not None:
            getattr(msg, field).CopyFrom(ts_to_pb(getattr(u, field)))
    return msg


def usage_from_pb(m: pb.WorkspaceUsage, path: str = "usage") -> model.Usage:
    values = {f.name: getattr(m, f.name) for f in dataclasses.fields(model.Usage) if f.name not in _USAGE_TIMES}
    return model.Usage(**values, **{f: ts_from_pb(m, f, f"{path}.{f}") for f in _USAGE_TIMES})


def resources_to_pb(r: model.Resources) -> pb.ResourceAllocation:
    return pb.ResourceAllocation(memory_bytes=r.memory_bytes, disk_bytes=r.disk_bytes,
                                 cpu_millis=r.cpu_millis, network_bits_per_second=r.network_bits_per_second,
                                 max_processes=r.max_processes)


def resources_from_pb(m: pb.ResourceAllocation) -> model.Resources:
    return model.Resources(m.memory_bytes, m.disk_bytes, m.cpu_millis, m.network_bits_per_second, m.max_processes)


def spec_to_pb(spec: model.WorkspaceSpec) -> pb.WorkspaceSpec:
    msg = pb.WorkspaceSpec(
        kind=kind_to_pb(spec.kind),
        software=pb.SoftwareConfiguration(
            environment=spec.software.environment,
            setup_script=spec.software.setup_script,
            files=[pb.StagedFile(path=f.path, content=f.content, mode=f.mode) for f in spec.software.files],
            image=spec.software.image,
            unix_group=spec.software.unix_group,
        ),
        resources=resources_to_pb(spec.resources),
        start_on_create=spec.start_on_create,
    )
    if spec.lifetime is not None:
        msg.lifetime.CopyFrom(duration_to_pb(spec.lifetime))
    return msg


def spec_from_pb(msg: pb.WorkspaceSpec, path: str = "workspace.spec") -> model.WorkspaceSpec:
    """Kind may come back None (unspecified/unknown); validation reports it. path: the spec's
    path in the request, for errors."""
    sw = msg.software
    return model.WorkspaceSpec(
        kind=kind_from_pb(msg.kind),
        software=model.Software(
            environment=dict(sw.environment),
            setup_script=sw.setup_script,
            files=[model.StagedFile(f.path, f.content, f.mode or 0o644) for f in sw.files],
            image=sw.image,
            unix_group=sw.unix_group,
        ),
        resources=resources_from_pb(msg.resources),
        lifetime=duration_from_pb(msg, "lifetime", f"{path}.lifetime"),
        start_on_create=msg.start_on_create if msg.HasField("start_on_create") else True,
    )


def endpoint_to_pb(e: model.Endpoint) -> pb.EndpointReference:
    return pb.EndpointReference(workspace=e.workspace, manager=e.manager,
                                manager_address=e.manager_address, host_identity=e.host_identity)


def endpoint_from_pb(m: pb.EndpointReference) -> model.Endpoint:
    return model.Endpoint(m.workspace, m.manager, m.manager_address, m.host_identity)


def workspace_to_pb(w: model.Workspace) -> pb.Workspace:
    msg = pb.Workspace(
        name=w.name, spec=spec_to_pb(w.spec), state=state_to_pb(w.state),
        state_message=w.state_message, endpoint=endpoint_to_pb(w.endpoint), owner=w.owner,
        labels=w.labels, request_id=w.request_id,
    )
    if w.enforcement is not None:
        msg.enforcement.CopyFrom(enforcement_to_pb(w.enforcement))
    if w.progress is not None:
        msg.progress.CopyFrom(progress_to_pb(w.progress))
    if w.customisation is not None:
        msg.customisation.CopyFrom(customisation_to_pb(w.customisation))
    for field in ("create_time", "update_time", "termination_time"):
        value = getattr(w, field)
        if value is not None:
            getattr(msg, field).CopyFrom(ts_to_pb(value))
    return msg


def workspace_from_pb(msg: pb.Workspace, path: str = "workspace") -> model.Workspace:
    """path: the workspace's path in the request, for errors."""
    return model.Workspace(
        name=msg.name, spec=spec_from_pb(msg.spec, f"{path}.spec"), state=state_from_pb(msg.state),
        state_message=msg.state_message, endpoint=endpoint_from_pb(msg.endpoint), owner=msg.owner,
        **{f: ts_from_pb(msg, f, f"{path}.{f}") for f in ("create_time", "update_time", "termination_time")},
        labels=dict(msg.labels),
        request_id=msg.request_id,
        enforcement=enforcement_from_pb(msg.enforcement) if msg.HasField("enforcement") else None,
        progress=progress_from_pb(msg.progress, f"{path}.progress") if msg.HasField("progress") else None,
        customisation=customisation_from_pb(msg.customisation) if msg.HasField("customisation") else None,
    )


def customisation_to_pb(c: model.Customisation) -> pb.Customisation:
    return pb.Customisation(rule=c.rule, quota_group=c.quota_group, account_pool=c.account_pool,
                            unix_group=c.unix_group, environment=c.environment, image=c.image)


def customisation_from_pb(m: pb.Customisation) -> model.Customisation:
    return model.Customisation(m.rule, m.quota_group, m.account_pool, m.unix_group, dict(m.environment), m.image)


def progress_to_pb(p: model.Progress) -> pb.Progress:
    msg = pb.Progress(activity=p.activity, done_bytes=p.done_bytes, total_bytes=p.total_bytes,
                      bytes_per_second=p.bytes_per_second)
    if p.update_time is not None:
        msg.update_time.CopyFrom(ts_to_pb(p.update_time))
    return msg


def progress_from_pb(m: pb.Progress, path: str = "progress") -> model.Progress:
    return model.Progress(m.activity, m.done_bytes, m.total_bytes, m.bytes_per_second,
                          ts_from_pb(m, "update_time", f"{path}.update_time"))


_BOOT_TO_PB = {b: image_pb2.Image.Boot.Value(f"BOOT_{b.value}") for b in model.ImageBoot}
_BOOT_FROM_PB = {v: k for k, v in _BOOT_TO_PB.items()}
_VIS_TO_PB = {b: image_pb2.Image.Visibility.Value(f"VISIBILITY_{b.value}") for b in model.ImageVisibility}
_VIS_FROM_PB = {v: k for k, v in _VIS_TO_PB.items()}
_ROLE_TO_PB = {b: image_pb2.ImageFile.Role.Value(f"ROLE_{b.value}") for b in model.FileRole}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_FORMAT_TO_PB = {b: image_pb2.ImageFile.Format.Value(f"FORMAT_{b.value}") for b in model.FileFormat}
_FORMAT_FROM_PB = {v: k for k, v in _FORMAT_TO_PB.items()}


def image_to_pb(i: model.Image) -> image_pb2.Image:
    msg = image_pb2.Image(
        name=i.name, boot=_BOOT_TO_PB[i.boot], size_bytes=i.size_bytes, owner=i.owner,
        visibility=_VIS_TO_PB[i.visibility], kernel_args=i.kernel_args, description=i.description,
        guest_agent=i.guest_agent,
        files=[image_pb2.ImageFile(role=_ROLE_TO_PB[f.role], format=_FORMAT_TO_PB[f.format],
                                   size_bytes=f.size_bytes, digest=f.digest, location=f.location)
               for f in i.files])
    if i.create_time is not None:
        msg.create_time.CopyFrom(ts_to_pb(i.create_time))
    return msg


def image_from_pb(m: image_pb2.Image, path: str = "image") -> model.Image:
    return model.Image(
        name=m.name, boot=_BOOT_FROM_PB.get(m.boot, model.ImageBoot.UNSPECIFIED),
        files=[model.ImageFile(_ROLE_FROM_PB.get(f.role, model.FileRole.UNSPECIFIED),
                               _FORMAT_FROM_PB.get(f.format, model.FileFormat.UNSPECIFIED),
                               f.size_bytes, f.digest, f.location) for f in m.files],
        size_bytes=m.size_bytes, owner=m.owner,
        visibility=_VIS_FROM_PB.get(m.visibility, model.ImageVisibility.UNSPECIFIED),
        kernel_args=m.kernel_args, description=m.description, create_time=ts_from_pb(m, "create_time", f"{path}.create_time"),
        guest_agent=m.guest_agent)


def event_to_pb(e: model.Event) -> pb.WorkspaceEvent:
    return pb.WorkspaceEvent(
        name=e.name, type=event_type_to_pb(e.type), time=ts_to_pb(e.time),
        previous_state=state_to_pb(e.previous_state), state=state_to_pb(e.state),
        message=e.message, source=e.source)


def event_from_pb(m: pb.WorkspaceEvent, path: str = "event") -> model.Event:
    return model.Event(name=m.name, type=event_type_from_pb(m.type), time=ts_from_pb(m, "time", f"{path}.time"),
                       previous_state=state_from_pb(m.previous_state), state=state_from_pb(m.state),
                       message=m.message, source=m.source)


def capacity_to_pb(c: model.Capacity) -> pb.Capacity:
    return pb.Capacity(workspaces=c.workspaces, memory_bytes=c.memory_bytes,
                       disk_bytes=c.disk_bytes, cpu_millis=c.cpu_millis)


def capacity_from_pb(m: pb.Capacity) -> model.Capacity:
    return model.Capacity(m.workspaces, m.memory_bytes, m.disk_bytes, m.cpu_millis)


def manager_to_pb(m: model.ManagerInfo) -> pb.Manager:
    msg = pb.Manager(
        name=m.name, address=m.address, kinds=[kind_to_pb(k) for k in m.kinds], backend=m.backend,
        capacity=capacity_to_pb(m.capacity), allocated=capacity_to_pb(m.allocated),
        state=_MSTATE_TO_PB[m.state], heartbeat_interval=duration_to_pb(m.heartbeat_interval),
        account_pool=m.account_pool, identity=m.identity)
    for field in ("register_time", "heartbeat_time"):
        value = getattr(m, field)
        if value is not None:
            getattr(msg, field).CopyFrom(ts_to_pb(value))
    return msg


def manager_from_pb(msg: pb.Manager, path: str = "manager") -> model.ManagerInfo:
    return model.ManagerInfo(
        name=msg.name, address=msg.address,
        kinds=[k for k in (kind_from_pb(v) for v in msg.kinds) if k is not None],
        backend=msg.backend, capacity=capacity_from_pb(msg.capacity),
        allocated=capacity_from_pb(msg.allocated),
        state={v: k for k, v in _MSTATE_TO_PB.items()}.get(msg.state, model.ManagerState.UNSPECIFIED),
        **{f: ts_from_pb(msg, f, f"{path}.{f}") for f in ("register_time", "heartbeat_time")},
        heartbeat_interval=duration_from_pb(msg, "heartbeat_interval", f"{path}.heartbeat_interval") or model.dt.timedelta(seconds=2),
        account_pool=msg.account_pool, identity=msg.identity)


_CREDENTIAL_TO_PB = {k: access_pb2.Caller.CredentialKind.Value(f"CREDENTIAL_KIND_{k.name}") for k in CredentialKind}
_CREDENTIAL_FROM_PB = {v: k for k, v in _CREDENTIAL_TO_PB.items()}


def caller_to_pb(c: Caller) -> access_pb2.Caller:
    msg = access_pb2.Caller(identity=c.identity, administrator=c.administrator, service_role=c.service_role)
    p = c.principal
    if p is not None:
        msg.credential_kind = _CREDENTIAL_TO_PB[p.kind]
        msg.attributes.extend(p.attributes)
        msg.scopes.extend(p.scopes)
        msg.vo, msg.issuer, msg.digest = p.vo, p.issuer, p.digest
        msg.expire_time.CopyFrom(ts_to_pb(p.expiry))
    return msg


def caller_from_pb(m: access_pb2.Caller, path: str = "caller") -> Caller:
    """The caller as the repository verified it (AuthorizeCall's answer)."""
    kind = _CREDENTIAL_FROM_PB.get(m.credential_kind)
    principal = Principal(identity=m.identity, kind=kind, attributes=tuple(m.attributes),
                          expiry=ts_from_pb(m, "expire_time", f"{path}.expire_time") or dt.datetime.max.replace(tzinfo=dt.timezone.utc),
                          digest=m.digest, issuer=m.issuer, vo=m.vo, scopes=tuple(m.scopes)) if kind else None
    return Caller(identity=m.identity, principal=principal, administrator=m.administrator,
                  service_role=m.service_role)
