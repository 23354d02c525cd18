"""The audit journal of a factory or a manager: entries written before the reply, shipped in
order one at a time, kept while the repository is away or until it took them, and shipped by
the next start when the process died first."""
from __future__ import annotations

import concurrent.futures
import logging

import grpc

from tests.integration.stack import wait_until
from vws.common.auth.journal import AuditJournal
from vws.v1 import access_pb2


class Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "no"

    def trailing_metadata(self):
        return ()


class Repository:
    """Takes entries when told to: each send stays open until answered."""

    def __init__(self):
        self.open: list[tuple[access_pb2.AuditEntry, concurrent.futures.Future]] = []
        self.taken: list[str] = []

    def send(self, entry):
        f = concurrent.futures.Future()
        self.open.append((entry, f))
        return f

    def answer(self, error: BaseException | None = None) -> None:
        entry, f = self.open.pop(0)
        if error is None:
            self.taken.append(entry.action)
            f.set_result(None)
        else:
            f.set_exception(error)


def entry(action: str) -> access_pb2.AuditEntry:
    return access_pb2.AuditEntry(identity="/CN=alice", action=action, outcome="OK")


def test_entries_ship_in_order_one_at_a_time_and_leave_when_taken(tmp_path):
    repo = Repository()
    journal = AuditJournal(tmp_path / "j.db", repo.send, retry_interval=0.05)
    try:
        for a in ("A", "B", "C"):
            journal.append(entry(a))
        wait_until(lambda: repo.open, what="the first send")  # by the journal's thread, off the caller's path
        assert [e.action for e, _ in repo.open] == ["A"]  # one at a time
        assert journal.pending() == 3
        for _ in range(3):
            repo.answer()
        assert repo.taken == ["A", "B", "C"] and journal.pending() == 0
    finally:
        journal.close(grace=0)


def test_an_absent_repository_keeps_them_and_a_restart_ships_what_a_crash_left(tmp_path):
    repo = Repository()
    journal = AuditJournal(tmp_path / "j.db", repo.send, retry_interval=0.05)
    journal.append(entry("A"))
    journal.append(entry("B"))
    wait_until(lambda: repo.open, what="the first send")
    repo.answer(Failure(grpc.StatusCode.UNAVAILABLE))
    wait_until(lambda: repo.open, what="the retry")
    assert repo.open[0][0].action == "A" and journal.pending() == 2
    journal.close(grace=0)  # as a crash would leave it: nothing taken
    later = Repository()
    journal = AuditJournal(tmp_path / "j.db", later.send, retry_interval=0.05)
    try:
        wait_until(lambda: later.open, what="the replay at start")
        later.answer()
        later.answer()
        assert later.taken == ["A", "B"] and journal.pending() == 0
    finally:
        journal.close(grace=0)


def test_an_entry_refused_for_good_is_logged_and_does_not_hold_up_the_rest(tmp_path, caplog):
    repo = Repository()
    journal = AuditJournal(tmp_path / "j.db", repo.send, retry_interval=0.05)
    try:
        journal.append(entry("A"))
        journal.append(entry("B"))
        wait_until(lambda: repo.open, what="the first send")
        with caplog.at_level(logging.ERROR, "vws.audit"):
            repo.answer(Failure(grpc.StatusCode.PERMISSION_DENIED))
        assert "refused audit entry" in caplog.text and '"A"' in caplog.text
        repo.answer()
        assert repo.taken == ["B"] and journal.pending() == 0
    finally:
        journal.close(grace=0)
