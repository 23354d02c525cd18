"""Repository reads: Get throughput beside a trivial echo gRPC server, and the first page of
List with 100,000 workspaces stored."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest
import sqlalchemy as sa

from bench.conftest import ms
from tests.integration.stack import Process
from vws.common import clients, model, names
from vws.repository import db, store
from vws.v1 import repository_pb2, workspace_pb2

SECONDS = 3.0
CLIENTS = 4
STORED = 100_000


def throughput(call, seconds=SECONDS, threads=CLIENTS) -> float:
    """Requests per second from `threads` client threads calling `call` for `seconds`."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def worker(i):
        n = 0
        while time.perf_counter() < stop:
            call()
            n += 1
        counts[i] = n
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


@pytest.fixture(scope="module")
def echo():
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo_server"], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel.unary_unary("/bench.Echo/Echo")
    proc.terminate()
    proc.wait()


def populate(url: str, n: int) -> str:
    """Bulk-inserts n workspaces (as the repository stores them) and returns one name."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    now = model.utcnow()
    spec = store.spec_to_json(model.WorkspaceSpec(resources=model.Resources(512 * 1024 ** 2, 1024 ** 3, 250, 10 ** 8)))
    rows = []
    for i in range(n):
        t = now - dt.timedelta(seconds=n - i)
        rows.append(dict(name=names.workspace_name(names.new_workspace_id()), spec=spec,
                         state=model.State.RUNNING.value if i % 10 else model.State.TERMINATED.value,
                         state_message="", state_time=t, owner=f"user{i % 50}", manager_name="managers/bench",
                         manager_address="127.0.0.1:1", host_identity=f"vws-{i}", labels={},
                         request_id=str(uuid.uuid4()), request_digest="", create_time=t, update_time=t,
                         termination_time=t + dt.timedelta(days=1), destroy_reason="", event_seq=0))
    with engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(sa.insert(db.WorkspaceRow), rows[start:start + 5000])
    engine.dispose()
    return rows[-1]["name"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    data = tmp_path_factory.mktemp("repo")
    url = db.default_url(data)
    t0 = time.perf_counter()
    name = populate(url, STORED)
    print(f"\nstored {STORED} workspaces in {time.perf_counter() - t0:.1f}s")
    p = Process("repository", data, ["--listen", "127.0.0.1:0"], None).start()
    yield p, name
    p.stop()


@pytest.mark.benchmark(group="repository-get")
def test_get_throughput_beside_echo(benchmark, repository, echo, report):
    proc, name = repository
    stub = clients.repository(proc.address)
    req = repository_pb2.GetWorkspaceRequest(name=name)
    payload = req.SerializeToString()
    for _ in range(200):
        stub.GetWorkspace(req, timeout=10)
        echo(payload, timeout=10)
    echo_rps = throughput(lambda: echo(payload, timeout=10))
    get_rps = throughput(lambda: stub.GetWorkspace(req, timeout=10))
    benchmark.extra_info.update(get_rps=get_rps, echo_rps=echo_rps)
    benchmark.pedantic(lambda: stub.GetWorkspace(req, timeout=10), rounds=500, iterations=1)
    ratio = get_rps / echo_rps
    report.row(f"Repository Get, {CLIENTS} client threads, {STORED} stored", f"{get_rps:,.0f} req/s",
               f"echo server {echo_rps:,.0f} req/s", f"{ratio:.2f}x",
               ">= 0.5x" + (" (met)" if ratio >= 0.5 else " (MISSED)"))


@pytest.mark.benchmark(group="repository-list")
def test_list_first_page_with_100k_stored(benchmark, repository, report):
    proc, _ = repository
    stub = clients.repository(proc.address)
    req = repository_pb2.ListWorkspacesRequest(page_size=50)
    first = stub.ListWorkspaces(req, timeout=10)
    assert len(first.workspaces) == 50 and first.next_page_token
    samples = []

    def target():
        t0 = time.perf_counter()
        stub.ListWorkspaces(req, timeout=10)
        samples.append(time.perf_counter() - t0)
    benchmark.pedantic(target, rounds=200, iterations=1)
    samples.sort()
    p50 = samples[len(samples) // 2]
    # the anchor: the same page with a filter on one owner's 2,000 (the index's own best case)
    owner = repository_pb2.ListWorkspacesRequest(page_size=50, owner="user7")
    anchor = []
    for _ in range(200):
        t0 = time.perf_counter()
        stub.ListWorkspaces(owner, timeout=10)
        anchor.append(time.perf_counter() - t0)
    anchor.sort()
    a50 = anchor[len(anchor) // 2]
    report.row(f"List first page (50) of {STORED} stored, p50 / p99",
               f"{ms(p50)} / {ms(samples[int(len(samples) * 0.99) - 1])}",
               f"one owner's page p50 {ms(a50)}", f"{p50 / a50:.2f}x",
               "<= 50 ms" + (" (met)" if p50 <= 0.05 else " (MISSED)"))
