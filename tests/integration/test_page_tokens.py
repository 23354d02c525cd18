"""Page tokens through a real repository server, on SQLite and PostgreSQL: a token is sealed by
the repository's key (kept in its data directory, so tokens outlive a restart); a forged,
altered, cut short or foreign token is INVALID_ARGUMENT naming page_token, never INTERNAL."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import stat

import grpc
import pytest
from vws.common import clients, config, converters, model
from vws.common.auth.gate import PLAIN_TEXT_CALLER
from vws.repository import paging
from vws.repository import server as repo_server
from vws.v1 import repository_pb2

from tests.integration.test_repository_grpc import create, place, violations

Events = repository_pb2.ListWorkspaceEventsRequest


@pytest.fixture
def repository(database_url, tmp_path):
    """start() serves a repository over one data directory and database; a second start() is a restart."""
    settings = config.RepositorySettings(data_dir=tmp_path, listen="127.0.0.1:0", database_url=database_url,
                                         insecure=True)
    running = []

    def start():
        if running:
            running.pop().stop(1)
        server, _ = repo_server.serve(settings)
        running.append(server)
        address = f"127.0.0.1:{server.port}"
        return clients.repository(address), clients.records(address)
    yield start
    for server in running:
        server.stop(1)


def _old_token(doc: dict, **filters) -> str:
    """A token in the old format, whose fingerprint any client could compute."""
    fp = hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(json.dumps({**doc, "f": fp}).encode()).decode().rstrip("=")


def _refused(call, request):
    with pytest.raises(grpc.RpcError) as e:
        call(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert violations(e.value) == ["page_token"] and "without page_token" in e.value.details()


def _workspace_with_events(records):
    ws = create(records).workspace
    place(records, ws.name, "127.0.0.1:9")  # created, placed, running: three events
    return ws.name


@pytest.mark.parametrize("resume", [{"s": 2**63}, {"s": 2**64}, {"s": True}, {"s": "1"}, {"s": -1}, {"s": 1.5},
                                    {}])
def test_forged_event_tokens_are_refused(repository, resume):
    repo, records = repository()
    name = _workspace_with_events(records)
    _refused(repo.ListWorkspaceEvents, Events(parent=name, page_token=_old_token(resume, parent=name)))


@pytest.mark.parametrize("resume", [{"i": 2**64}, {"i": True}, {"i": "1"}, {"c": "10000-01-01T00:00:00+00:00"},
                                    {"c": "2020-01-01T00:00:00"}])
def test_forged_workspace_tokens_are_refused(repository, resume):
    repo, records = repository()
    create(records)
    doc = {"c": model.utcnow().isoformat(), "i": 1, **resume}
    token = _old_token(doc, states=[], owner="", labels=[], manager="", caller=PLAIN_TEXT_CALLER.identity)
    _refused(repo.ListWorkspaces, repository_pb2.ListWorkspacesRequest(page_token=token))


def test_forged_manager_tokens_are_refused(repository):
    repo, _ = repository()
    for name in ("managers/" + "a" * 5000, 5, False, None):
        _refused(repo.ListManagers, repository_pb2.ListManagersRequest(page_token=_old_token({"n": name},
                                                                                            what="managers")))


def test_tokens_of_another_key_altered_or_cut_short_are_refused(repository):
    repo, records = repository()
    name = _workspace_with_events(records)
    other = _workspace_with_events(records)
    token = repo.ListWorkspaceEvents(Events(parent=name, page_size=1)).next_page_token
    assert token
    foreign = paging.PageTokens(secrets.token_bytes(32)).sequence_token(paging.listing("events", parent=name), 1)
    altered = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (foreign, altered, token[:-1], token[:len(token) // 2], token[:10], token + "AA", token + "!",
                "é" + token, "x" * 5000):
        _refused(repo.ListWorkspaceEvents, Events(parent=name, page_size=1, page_token=bad))
    _refused(repo.ListWorkspaceEvents, Events(parent=other, page_size=1, page_token=token))  # another listing's


def test_paging_works_and_tokens_outlive_a_restart(repository, tmp_path):
    repo, records = repository()
    name = _workspace_with_events(records)
    names = [create(records).workspace.name for _ in range(2)]
    first = repo.ListWorkspaceEvents(Events(parent=name, page_size=1))
    workspaces = repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(page_size=1))
    assert len(first.events) == 1 and first.next_page_token and workspaces.next_page_token
    key = tmp_path / paging.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32

    repo, records = repository()  # a restart: the same data directory and database
    rest = repo.ListWorkspaceEvents(Events(parent=name, page_size=1, page_token=first.next_page_token))
    assert [e.type for e in rest.events] and rest.events[0].time.ToDatetime() >= first.events[0].time.ToDatetime()
    seen = [e.type for e in first.events]
    token = first.next_page_token
    while token:
        page = repo.ListWorkspaceEvents(Events(parent=name, page_size=1, page_token=token))
        seen += [e.type for e in page.events]
        token = page.next_page_token
    assert len(seen) == 3
    listed = list(workspaces.workspaces)
    token = workspaces.next_page_token
    while token:
        page = repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(page_size=1, page_token=token))
        listed += page.workspaces
        token = page.next_page_token
    assert [w.name for w in listed] == list(reversed([name] + names))


def test_managers_page_by_name(repository):
    repo, _ = repository()
    for n in ("managers/m-b", "managers/m-a", "managers/m-c"):
        info = model.ManagerInfo(name=n, address="127.0.0.1:9")
        repo.RegisterManager(repository_pb2.RegisterManagerRequest(manager=converters.manager_to_pb(info)))
    listed, token = [], ""
    while True:
        page = repo.ListManagers(repository_pb2.ListManagersRequest(page_size=1, page_token=token))
        listed += [m.name for m in page.managers]
        token = page.next_page_token
        if not token:
            break
    assert listed == ["managers/m-a", "managers/m-b", "managers/m-c"]
