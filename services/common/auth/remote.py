"""The factory's and the managers' Authorizer: the repository decides (RecordService
AuthorizeCall, which also records refusals) and keeps the audit trail (AppendAuditEntry)."""
from __future__ import annotations

import dataclasses
import datetime as dt

from vws.common import clients
from vws.common.auth.gate import AuditRecord, Call, Caller, Rule
from vws.common.auth.principal import CredentialKind, Principal
from vws.v1 import access_pb2, record_pb2

TIMEOUT = 15.0
_KIND_TO_PB = {CredentialKind.CERTIFICATE: access_pb2.Caller.CREDENTIAL_KIND_CERTIFICATE,
               CredentialKind.PROXY: access_pb2.Caller.CREDENTIAL_KIND_PROXY,
               CredentialKind.TOKEN: access_pb2.Caller.CREDENTIAL_KIND_TOKEN}
_KIND_FROM_PB = {v: k for k, v in _KIND_TO_PB.items()}


def caller_to_pb(c: Caller) -> access_pb2.Caller:
    msg = access_pb2.Caller(identity=c.identity, administrator=c.administrator, service_role=c.service_role)
    p = c.principal
    if p is not None:
        msg.credential_kind = _KIND_TO_PB[p.kind]
        msg.attributes.extend(p.attributes)
        msg.scopes.extend(p.scopes)
        msg.vo, msg.issuer, msg.digest = p.vo, p.issuer, p.digest
        msg.expire_time.FromDatetime(p.expiry)
    return msg


def caller_from_pb(msg: access_pb2.Caller) -> Caller:
    principal = None
    if msg.credential_kind in _KIND_FROM_PB:
        principal = Principal(identity=msg.identity, kind=_KIND_FROM_PB[msg.credential_kind],
                              attributes=tuple(msg.attributes), expiry=msg.expire_time.ToDatetime(dt.timezone.utc),
                              digest=msg.digest, issuer=msg.issuer, vo=msg.vo, scopes=tuple(msg.scopes))
    return Caller(identity=msg.identity, principal=principal, administrator=msg.administrator,
                  service_role=msg.service_role)


class RemoteAuthorizer:
    def __init__(self, repository_address: str):
        self.repository_address = repository_address

    def authorize(self, call: Call, rule: Rule) -> Caller:
        answer = clients.records(self.repository_address).AuthorizeCall(record_pb2.AuthorizeCallRequest(
            authorization=call.authorization, client_certificate=call.certificate, source=call.source,
            action=call.action, target=call.target, service=call.service), timeout=TIMEOUT)
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
                                        message=record.message)), timeout=TIMEOUT)
