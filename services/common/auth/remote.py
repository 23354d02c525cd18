"""The factory's and the managers' Authorizer: the repository decides (RecordService
AuthorizeCall, which also records refusals) and keeps the audit trail (AppendAuditEntry)."""
from __future__ import annotations

import dataclasses

from .. import clients
from .gate import AuditRecord, Call, Caller, Rule
from ..converters import caller_from_pb
from ...v1 import access_pb2, record_pb2


class RemoteAuthorizer:
    def __init__(self, repository_address: str):
        self.repository_address = repository_address

    def authorize(self, call: Call, rule: Rule) -> Caller:
        answer = clients.records(self.repository_address).AuthorizeCall(record_pb2.AuthorizeCallRequest(
            authorization=call.authorization, client_certificate=call.certificate, source=call.source,
            action=call.action, target=call.target, service=call.service), timeout=clients.TIMEOUT)
        caller = caller_from_pb(answer.caller)
        if answer.HasField("entitlement"):
            caller = dataclasses.replace(caller, entitlement=answer.entitlement)
        return caller

    def audit(self, record: AuditRecord) -> None:
        c = record.caller
        clients.records(self.repository_address).AppendAuditEntry(record_pb2.AppendAuditEntryRequest(
            entry=access_pb2.AuditEntry(identity=c.identity if c else "", attributes=c.attributes if c else (),
                                        source=record.call.source, service=record.service,
                                        action=record.call.action,
                                        target=record.call.target, outcome=record.outcome,
                                        message=record.message)), timeout=clients.TIMEOUT)
