"""The factory's and the managers' Authorizer: the repository decides (RecordService
AuthorizeCall, which also records refusals) and keeps the audit trail (AppendAuditEntry),
each entry through a local journal (vws.common.auth.journal) when one is given, so that the
reply does not wait for the repository.

A caller the repository let make a call that needs no role on a workspace (a create) is
remembered for that call and credential for a few seconds, never past the credential's end:
a user's run of creates asks once. A refusal is never remembered, and a call that needs a role
on a workspace (where a revoke must take effect at once) always asks."""
from __future__ import annotations

import dataclasses
import datetime as dt
import pathlib
from typing import Callable

from .. import clients, model
from .credentials import ExpiringCache
from .gate import AuditRecord, Call, Caller, Rule
from .journal import AuditJournal
from .principal import digest_of
from ..converters import caller_from_pb, ts_to_pb
from ...v1 import access_pb2, record_pb2


def audit_entry_to_pb(record: AuditRecord) -> access_pb2.AuditEntry:
    """The entry as the repository records it, timed now: when the call ended."""
    c = record.caller
    return access_pb2.AuditEntry(time=ts_to_pb(model.utcnow()), identity=c.identity if c else "",
                                 attributes=c.attributes if c else (), source=record.call.source,
                                 service=record.service, action=record.call.action, target=record.call.target,
                                 outcome=record.outcome, message=record.message)


# How long an answer of the repository is taken again for the same call and credential.
REMEMBERED_FOR = dt.timedelta(seconds=5)


@dataclasses.dataclass(frozen=True)
class _Allowed:
    caller: Caller
    expiry: dt.datetime


class RemoteAuthorizer:
    def __init__(self, repository_address: str, journal: pathlib.Path | None = None,
                 clock: Callable[[], dt.datetime] = model.utcnow):
        """`journal`: the file audit entries wait in for the repository (None: each is sent
        before the reply, and only logged when the repository does not take it)."""
        self.repository_address, self.clock = repository_address, clock
        self.journal = AuditJournal(journal, self._send) if journal is not None else None
        self._allowed = ExpiringCache()

    def authorize(self, call: Call, rule: Rule) -> Caller:
        key = digest_of(call.action.encode(), call.authorization.encode(), call.certificate) \
            if rule.needs is None else ""
        now = self.clock()
        if key and (hit := self._allowed.get(key, now)) is not None:
            return hit.caller
        answer = clients.records(self.repository_address).AuthorizeCall(record_pb2.AuthorizeCallRequest(
            authorization=call.authorization, client_certificate=call.certificate, source=call.source,
            action=call.action, target=call.target, service=call.service), timeout=clients.TIMEOUT)
        caller = caller_from_pb(answer.caller)
        if answer.HasField("entitlement"):
            caller = dataclasses.replace(caller, entitlement=answer.entitlement)
        if key and caller.principal is not None:
            self._allowed.put(key, _Allowed(caller, min(now + REMEMBERED_FOR, caller.principal.expiry)))
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
