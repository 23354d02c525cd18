"""Usage accounting with real servers and a real account: the manager samples the workspace's
counters, the repository keeps them (GetUsage, `vws usage`), a destroy records the final
figures, and the export as OGF Usage Records holds them."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from tests.integration.stack import wait_until
from tests.integration.test_workspaces import create, repo, run
from vws.common.auth.pki import admin_identity
from vws.v1 import repository_pb2, workspace_pb2

OWNER = admin_identity()  # the test's calls are the administrator's: it owns what they create

URF = {"urf": "http://schema.ogf.org/urf/2003/09/urf"}


def usage(stack, name):
    return repo(stack).GetUsage(repository_pb2.GetUsageRequest(name=name), timeout=10).usage


def test_usage_from_sampling_to_final_and_export(stack_factory):
    stack = stack_factory(accounting_interval="0.5s")
    # A whole core: the site's default CPU (250m) would throttle the busy loop to a quarter.
    ws = create(stack, resources=workspace_pb2.ResourceAllocation(cpu_millis=1000)).workspace
    wait_until(lambda: usage(stack, ws.name).samples >= 1, 20, what="the first sample to reach the repository")

    # About 2 s of CPU time, however busy the host is (a wall-clock loop gets less on a loaded one).
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 2.0: pass\n"
    code, _, _ = run(stack, ws, ["timeout", "60", "/usr/bin/python3", "-c", burn])
    assert code == 0
    u = wait_until(lambda: (lambda u: u if u.cpu_seconds >= 1.0 else None)(usage(stack, ws.name)), 20,
                   what="usage to show the CPU-busy program")
    assert u.cpu_seconds < 10 and u.memory_peak_bytes > 0 and not u.final
    assert u.end_time.ToDatetime() >= u.start_time.ToDatetime() and u.wall_seconds > 0

    r = stack.cli("usage", ws.name, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert float(json.loads(r.stdout)["cpu_seconds"]) >= 1.0
    r = stack.cli("usage", ws.name)
    assert r.returncode == 0 and "cpu seconds:" in r.stdout.decode() and "final:" in r.stdout.decode()

    repo(stack).DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name), timeout=60)
    final = wait_until(lambda: (lambda u: u if u.final else None)(usage(stack, ws.name)), 20,
                       what="the final usage")
    assert final.cpu_seconds >= u.cpu_seconds

    x = repo(stack).ExportUsageRecords(repository_pb2.ExportUsageRecordsRequest(owner=OWNER), timeout=10)
    assert x.record_count == 1
    root = ET.fromstring(x.usage_records_xml.encode())
    rec = root.find("urf:UsageRecord", URF)
    assert rec.find("urf:JobIdentity/urf:LocalJobId", URF).text == ws.name.split("/")[1]
    assert rec.find("urf:UserIdentity/urf:LocalUserId", URF).text == ws.endpoint.host_identity
    assert rec.find("urf:Status", URF).text == "completed"
    assert rec.find("urf:CpuDuration", URF).text.startswith("PT")

    r = stack.cli("usage", "--export", "--owner", OWNER, "--since", "1h")
    assert r.returncode == 0, r.stderr
    assert ws.name.split("/")[1] in r.stdout.decode()
    r = stack.cli("usage", "--export", "--owner", "nobody-here")
    assert r.returncode == 0 and ET.fromstring(r.stdout.split(b"\n", 1)[1]).find("urf:UsageRecord", URF) is None


def test_an_out_of_memory_kill_is_in_the_history_and_the_usage(stack_factory):
    stack = stack_factory(accounting_interval="0.5s")
    ws = create(stack, resources=workspace_pb2.ResourceAllocation(memory_bytes=64 * 1024 ** 2)).workspace
    wait_until(lambda: usage(stack, ws.name).samples >= 1, 20, what="the first sample to reach the repository")
    code, _, _ = run(stack, ws, ["/usr/bin/python3", "-c", "b = bytearray(300 * 1024 * 1024)"])
    assert code != 0  # killed
    wait_until(lambda: usage(stack, ws.name).oom_kills >= 1, 20, what="the kill to be counted")
    # the peak is the group's own high-water mark, not just what a sample happened to see
    assert usage(stack, ws.name).memory_peak_bytes >= 48 * 1024 ** 2

    def limit_events():
        events = repo(stack).ListWorkspaceEvents(repository_pb2.ListWorkspaceEventsRequest(parent=ws.name),
                                                 timeout=10).events
        return [e for e in events if e.type == workspace_pb2.WorkspaceEvent.TYPE_LIMIT_REACHED]
    (event,) = wait_until(limit_events, 20, what="a LIMIT_REACHED event")
    assert event.message == "1 program killed for going past the memory limit of 64M"
    assert event.source == stack.manager_name("m0")
