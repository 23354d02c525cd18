"""Usage in the repository, on SQLite and PostgreSQL: what managers report, GetUsage, and the
export as OGF Usage Records (GFD.204)."""
from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from vws.common import errors, model
from vws.common.model import State
from vws.repository import db
from vws.repository.usage import URF, xsd_duration
from tests.unit.test_repository_service import MANAGER, T0, assert_checks_the_name, field_of, placed
from tests.unit.test_repository_service import env  # noqa: F401 - a fixture

NS = {"urf": URF}


def usage(name, final=False, cpu=12.5, samples=3, start=T0, seconds=3723.5, **kw):
    return model.Usage(name=name, start_time=start, end_time=start + dt.timedelta(seconds=seconds),
                       cpu_seconds=cpu, memory_current_bytes=100, memory_peak_bytes=2048,
                       memory_byte_seconds=4096.0, disk_used_bytes=10_000, network_rx_bytes=300,
                       network_tx_bytes=200, seconds_at_memory_limit=1.5, seconds_at_cpu_limit=2.5, oom_kills=1,
                       samples=samples, final=final, wall_seconds=seconds, **kw)


def test_report_and_get(env):
    service, clock, _ = env
    ws = placed(service, clock)
    assert service.usage.get_usage(ws.name) == model.Usage(name=ws.name)  # zeros before the first sample
    assert service.usage.report_usage(MANAGER, [usage(ws.name)]) == 1
    got = service.usage.get_usage(ws.name)
    assert got == usage(ws.name)
    assert got.start_time.tzinfo is not None
    # The latest cumulative figures replace the earlier ones.
    assert service.usage.report_usage(MANAGER, [usage(ws.name, cpu=20.0, samples=4)]) == 1
    assert service.usage.get_usage(ws.name).cpu_seconds == 20.0


def test_only_the_holding_manager_reports_and_unknown_ones_are_skipped(env):
    service, clock, _ = env
    ws = placed(service, clock)
    assert service.usage.report_usage("managers/other", [usage(ws.name)]) == 0
    assert service.usage.report_usage(MANAGER, [usage(ws.name), usage("workspaces/wunknown0000x")]) == 1
    assert service.usage.get_usage(ws.name).samples == 3
    with pytest.raises(errors.InvalidArgument) as e:
        service.usage.report_usage(MANAGER, [usage(ws.name), usage("nonsense")])
    assert field_of(e) == ["usage[1].name"]
    with pytest.raises(errors.InvalidArgument) as e:
        service.usage.report_usage("", [usage(ws.name)])
    assert field_of(e) == ["manager"]


def test_final_figures_are_never_overwritten_by_later_non_final_ones(env):
    service, clock, _ = env
    ws = placed(service, clock)
    service.usage.report_usage(MANAGER, [usage(ws.name, final=True, cpu=30.0, samples=9)])
    service.usage.report_usage(MANAGER, [usage(ws.name, final=False, cpu=31.0, samples=10)])
    got = service.usage.get_usage(ws.name)
    assert got.final and got.cpu_seconds == 30.0
    # A later final one of at least as many samples does replace them; one with none keeps them.
    service.usage.report_usage(MANAGER, [usage(ws.name, final=True, cpu=32.0, samples=10)])
    assert service.usage.get_usage(ws.name).cpu_seconds == 32.0
    service.usage.report_usage(MANAGER, [model.Usage(name=ws.name, final=True)])
    got = service.usage.get_usage(ws.name)
    assert got.final and got.cpu_seconds == 32.0 and got.samples == 10


def test_usage_is_kept_after_destroy(env):
    service, clock, _ = env
    ws = placed(service, clock)
    service.usage.report_usage(MANAGER, [usage(ws.name, final=True)])
    assert service.lifetimes.delete(ws.name).state is State.TERMINATED
    assert service.usage.get_usage(ws.name).final


def test_get_usage_errors(env):
    service, _, _ = env
    assert_checks_the_name(service.usage.get_usage, "workspaces/wnothere0000x", "bad name")


def test_xsd_duration():
    assert xsd_duration(3723.5) == "PT1H2M3.5S"
    assert xsd_duration(0) == "PT0S"
    assert xsd_duration(60) == "PT1M"
    assert xsd_duration(0.25) == "PT0.25S"
    assert xsd_duration(90061) == "PT25H1M1S"


def _records(xml: str):
    root = ET.fromstring(xml.split("\n", 1)[1] if xml.startswith("<?xml") else xml)
    assert root.tag == f"{{{URF}}}UsageRecords"
    return {r.find("urf:JobName", NS).text: r for r in root.findall("urf:UsageRecord", NS)}


def test_export_usage_records(env):
    service, clock, _ = env
    a = placed(service, clock, owner="alice")
    b = placed(service, clock, owner="bob")
    c = placed(service, clock, owner="alice")  # never sampled: no usage row, no record
    service.usage.report_usage(MANAGER, [usage(a.name, final=True), usage(b.name, start=T0 + dt.timedelta(days=2))])
    service.records.report_state(b.name, MANAGER, State.RUNNING, "still", clock(), "vws-1")

    xml, count = service.usage.export_usage_records()
    assert count == 2 and xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    records = _records(xml)
    assert set(records) == {a.name, b.name} and c.name not in records
    r = records[a.name]
    q = lambda path: r.find(path, NS)  # noqa: E731
    ident = q("urf:RecordIdentity")
    assert ident.get(f"{{{URF}}}recordId") == f"vws:{MANAGER}/{a.name}" and ident.get(f"{{{URF}}}createTime")
    assert q("urf:JobIdentity/urf:LocalJobId").text == a.name.split("/")[1]
    assert q("urf:UserIdentity/urf:GlobalUserName").text == "alice"
    assert q("urf:UserIdentity/urf:LocalUserId").text == "vws-1"
    assert q("urf:Status").text == "completed"
    assert records[b.name].find("urf:Status", NS).text == "running"
    assert q("urf:WallDuration").text == "PT1H2M3.5S" and q("urf:CpuDuration").text == "PT12.5S"
    assert q("urf:StartTime").text == "2030-01-01T12:00:00.000Z"
    assert q("urf:EndTime").text == "2030-01-01T13:02:03.500Z"
    assert q("urf:MachineName").text == MANAGER
    mem = q("urf:Memory")
    assert mem.text == "2048" and mem.get(f"{{{URF}}}storageUnit") == "B" and mem.get(f"{{{URF}}}metric") == "max"
    assert q("urf:Disk").text == "10000"
    net = q("urf:Network")
    assert net.text == "500" and net.get(f"{{{URF}}}metric") == "total"
    assert q("urf:Resource").text == "vws"

    # Per owner, and over a period: [start, end) against the first and latest samples.
    assert set(_records(service.usage.export_usage_records("alice")[0])) == {a.name}
    assert service.usage.export_usage_records("carol") [1] == 0
    day = dt.timedelta(days=1)
    assert set(_records(service.usage.export_usage_records("", T0 + day, T0 + 3 * day)[0])) == {b.name}
    assert set(_records(service.usage.export_usage_records("", T0 - day, T0 + day)[0])) == {a.name}
    assert service.usage.export_usage_records("", T0 + 5 * day, None)[1] == 0


def test_export_marks_failed_workspaces(env):
    service, clock, _ = env
    ws = placed(service, clock)
    clock.advance(seconds=1)
    service.records.report_state(ws.name, MANAGER, State.FAILED, "its account vanished", clock(), "vws-1")
    service.usage.report_usage(MANAGER, [usage(ws.name, final=True)])
    assert _records(service.usage.export_usage_records()[0])[ws.name].find("urf:Status", NS).text == "failed"


def test_export_argument_errors(env):
    service, _, _ = env
    with pytest.raises(errors.InvalidArgument) as e:
        service.usage.export_usage_records("", T0, T0 - dt.timedelta(seconds=1))
    assert field_of(e) == ["end_time"]
    with pytest.raises(errors.InvalidArgument) as e:
        service.usage.export_usage_records("x" * (db.OWNER_WIDTH + 1))
    assert field_of(e) == ["owner"]
