"""The factory's and the managers' Authorizer: the repository decides (RecordService
AuthorizeCall, which also records refusals) and keeps the audit trail (AppendAuditEntry),
each entry through a local journal (vws.common.auth.journal) when one is given, so that the
reply does not wait for the repository."""
from __future__ import annotations

import dataclasses
import pathlib

from .. import clients, model
from .gate import AuditRecord, Call, Caller, Rule
from .journal import AuditJournal
from ..converters import caller_from_pb, ts_to_pb
from ...v1 import access_pb2, record_pb2


def audit_entry_to_pb(record: AuditRecord) -> access_pb2.AuditEntry:
    """The entry as the repository records it, timed now: when the call ended."""
    c = record.caller
    return access_pb2.AuditEntry(time=ts_to_pb(model.utcnow()), identity=c.identity if c else "",
                                 attributes=c.attributes if c else (), source=record.call.source,
                                 service=record.service, action=record.call.action, target=record.call.target,
                                 outcome=record.outcome, message=record.message)


class RemoteAuthorizer:
    def __init__(self, repository_address: str, journal: pathlib.Path | None = None):
        """`journal`: the file audit entries wait in for the repository (None: each is sent
        before the reply, and only logged when the repository does not take it)."""
        self.repository_address = repository_address
        self.journal = AuditJournal(journal, self._send) if journal is not None else None

    def authorize(self, call: Call, rule: Rule) -> Caller:
        answer = clients.records(self.repository_address).AuthorizeCall(record_pb2.AuthorizeCallRequest(
            authorization=call.authorization, client_certificate=call.certificate, source=call.source,
            action=call.action, target=call.target, service=call.service), timeout=clients.TIMEOUT)
        caller = caller_from_pb(answer.caller)
        if answer.HasField("entitlement"):
            caller = dataclasses.replace(caller, entitlement=answer.entitlement)
        return caller

    def audit(self, record: AuditRecord) -> None:
        entry = audit_entry_to_pb(record)
        if self.journal is not None:
            self.journal.append(entry)
        else:
            self._send(entry).result()

    def _send(self, entry: access_pb2.AuditEntry):
        return clients.records(self.repository_address).AppendAuditEntry.future(
            record_pb2.AppendAuditEntryRequest(entry=entry), timeout=clients.TIMEOUT)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


class OnDemand:
    """A RemoteAuthorizer made when `protect` asks for one (with TLS only: a plain-text service
    has no gate and keeps no journal), closed with the service."""

    def __init__(self, repository_address: str, journal: pathlib.Path):
        self.repository_address, self.journal = repository_address, journal
        self.made: RemoteAuthorizer | None = None

    def __call__(self, _local_ca) -> RemoteAuthorizer:
        self.made = RemoteAuthorizer(self.repository_address, self.journal)
        return self.made

    def close(self) -> None:
        if self.made is not None:
            self.made.close()
