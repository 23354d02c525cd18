"""Usage accounting in the repository: the queries on workspace_usage (run inside a session
the caller's unit of work owns) and the export as Open Grid Forum Usage Records (GFD.204),
the format grid accounting reads."""
from __future__ import annotations

import dataclasses
import datetime as dt
import xml.etree.ElementTree as ET

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..common import model
from .db import EventRow, UsageRow, WorkspaceRow

URF = "http://schema.ogf.org/urf/2003/09/urf"
RESOURCE = "vws"
FIGURES = ("cpu_seconds", "memory_current_bytes", "memory_peak_bytes", "memory_byte_seconds", "disk_used_bytes",
            "network_rx_bytes", "network_tx_bytes", "seconds_at_memory_limit", "seconds_at_cpu_limit", "oom_kills",
            "samples", "wall_seconds")

ET.register_namespace("urf", URF)


def _workspace(session: Session, name: str, for_update: bool = False):
    """(id, manager_name, owner, host_identity) of a workspace, or None; never the ORM row, so
    that nothing here rewrites the workspace's snapshot."""
    w = WorkspaceRow
    query = sa.select(w.id, w.manager_name, w.owner, w.host_identity).where(w.name == name)
    if for_update:
        query = query.with_for_update()
    return session.execute(query).one_or_none()


def record(session: Session, usage: model.Usage, manager: str, now: dt.datetime) -> bool:
    """Keeps what `manager` reports of one workspace. False (nothing kept) when the workspace
    is unknown or held by another manager. Final figures are replaced only by final ones of at
    least as many samples."""
    found = _workspace(session, usage.name, for_update=True)
    if found is None or found.manager_name != manager:
        return False
    row = session.get(UsageRow, found.id)
    if row is None:
        row = UsageRow(workspace_id=found.id, final=False)
        session.add(row)
    elif row.final and (not usage.final or usage.samples < row.samples):
        return True  # a late round of sampling, after the final figures: they stand
    row.owner, row.manager_name, row.host_identity = found.owner, manager, found.host_identity
    row.update_time = now
    if usage.final and not usage.samples and row.samples:
        row.final = True  # it ended unsampled (its manager lost its book): the figures known stand
        return True
    row.start_time, row.end_time = usage.start_time, usage.end_time
    for f in FIGURES:
        setattr(row, f, getattr(usage, f))
    row.final = bool(row.final or usage.final)
    return True


def workspace_id(session: Session, name: str) -> int | None:
    found = _workspace(session, name)
    return None if found is None else found.id


def to_usage(name: str, row: UsageRow | None) -> model.Usage:
    if row is None:
        return model.Usage(name=name)
    return model.Usage(name=name, start_time=row.start_time, end_time=row.end_time, final=row.final,
                       **{f: getattr(row, f) for f in FIGURES})


def get(session: Session, workspace_id: int) -> UsageRow | None:
    return session.get(UsageRow, workspace_id)


@dataclasses.dataclass
class Exported:
    usage: model.Usage
    owner: str
    manager: str
    account: str
    status: str  # running | completed | failed
    record_time: dt.datetime


def export_rows(session: Session, owner: str, start: dt.datetime | None, end: dt.datetime | None,
                ) -> list[Exported]:
    """The usage of every workspace (of `owner`, when given) that ran at some time in [start, end)."""
    u, w = UsageRow, WorkspaceRow
    failed = sa.exists().where(EventRow.workspace_id == w.id, EventRow.state == model.State.FAILED.value)
    query = (sa.select(u, w.name, w.state, failed.label("failed")).join(w, w.id == u.workspace_id)
             .order_by(u.start_time, w.name))
    if owner:
        query = query.where(u.owner == owner)
    if start is not None:
        query = query.where(u.end_time >= sa.literal(start, type_=u.end_time.type))
    if end is not None:
        query = query.where(u.start_time < sa.literal(end, type_=u.start_time.type))
    out = []
    for row, name, state, was_failed in session.execute(query):
        status = "failed" if was_failed else ("completed" if row.final or state == model.State.TERMINATED.value
                                              else "running")
        out.append(Exported(to_usage(name, row), row.owner, row.manager_name, row.host_identity, status,
                            row.update_time))
    return out


# ----------------------------------------------------------------------------- GFD.204


def xsd_duration(seconds: float) -> str:
    """An xsd:duration in hours, minutes and seconds: 3723.5 -> PT1H2M3.5S, 0 -> PT0S."""
    seconds = max(float(seconds), 0.0)
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs != "0" or text == "PT":
        text += f"{secs}S"
    return text


def _xsd_time(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _q(tag: str) -> str:
    return f"{{{URF}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: str) -> ET.Element:
    element = ET.SubElement(parent, _q(tag), {_q(k): v for k, v in attributes.items()})
    if text is not None:
        element.text = text
    return element


def usage_records_xml(records: list[Exported]) -> str:
    """A urf:UsageRecords document, one urf:UsageRecord per workspace."""
    root = ET.Element(_q("UsageRecords"))
    for r in records:
        u = r.usage
        wid = u.name.split("/", 1)[-1]
        ur = _sub(root, "UsageRecord")
        _sub(ur, "RecordIdentity", recordId=f"{RESOURCE}:{r.manager}/{u.name}", createTime=_xsd_time(r.record_time))
        _sub(_sub(ur, "JobIdentity"), "LocalJobId", wid)
        user = _sub(ur, "UserIdentity")
        if r.account:
            _sub(user, "LocalUserId", r.account)
        _sub(user, "GlobalUserName", r.owner)
        _sub(ur, "JobName", u.name)
        _sub(ur, "Status", r.status)
        _sub(ur, "WallDuration", xsd_duration(u.wall_seconds))
        _sub(ur, "CpuDuration", xsd_duration(u.cpu_seconds))
        if u.start_time is not None:
            _sub(ur, "StartTime", _xsd_time(u.start_time))
        if u.end_time is not None:
            _sub(ur, "EndTime", _xsd_time(u.end_time))
        _sub(ur, "MachineName", r.manager)
        _sub(ur, "Memory", str(u.memory_peak_bytes), storageUnit="B", metric="max")
        _sub(ur, "Disk", str(u.disk_used_bytes), storageUnit="B")
        _sub(ur, "Network", str(u.network_rx_bytes + u.network_tx_bytes), storageUnit="B", metric="total")
        _sub(ur, "Resource", RESOURCE, description="Virtual Workspaces")
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode", xml_declaration=False)
    ET.fromstring(text)  # well-formed, or this raises before anything leaves
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + text + "\n"
