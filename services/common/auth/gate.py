"""The gate every call passes: who calls (a verified Caller), whether they may make this call,
and, for state-changing calls, an audit entry with how it ended.

Each method of every vws service has one Rule here (a method without one is refused):
- public: anyone (login, health, reflection);
- service: only vws services of the given roles, by a certificate of the site's own CA;
- user: any verified caller; with `needs`, the caller must hold that role on the workspace
  named by the request's `target` field, checked before the workspace is even looked up, so
  that a caller without it learns nothing of whether the workspace exists.

Where the check happens is an `Authorizer`: the repository decides locally (it holds the
credentials' trust, the policy, the role bindings and the audit trail); the factory and the
managers ask it (RecordService.AuthorizeCall, AppendAuditEntry)."""
from __future__ import annotations

import contextvars
import dataclasses
import enum
import logging
from typing import Protocol

import grpc

from .. import errors, tls
from .credentials import AUTHORIZATION, Authenticator
from .pki import admin_identity, service_role
from .principal import Principal

log = logging.getLogger("vws.gate")


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2
    MANAGER = 3

    @property
    def cli_name(self) -> str:
        return self.name.lower()


@dataclasses.dataclass(frozen=True)
class Caller:
    """A verified caller. `principal` is None only for a service met by its certificate."""
    identity: str
    principal: Principal | None = None
    administrator: bool = False
    service_role: str = ""
    # What the site's policy allows this caller (a vws.v1.Entitlement), when it was asked for.
    entitlement: object | None = dataclasses.field(default=None, compare=False)

    @property
    def attributes(self) -> tuple[str, ...]:
        return self.principal.attributes if self.principal else ()

    @property
    def privileged(self) -> bool:
        """May see and act on everything: an administrator or a vws service."""
        return self.administrator or bool(self.service_role)

    def members(self) -> set[str]:
        """The role-binding members this caller is: `identity:<id>` and `group:<g>` for every
        group its attributes fall in (an FQAN `/atlas/higgs/Role=production` is in
        `/atlas`, `/atlas/higgs` and `/atlas/higgs/Role=production`)."""
        out = {f"identity:{self.identity}"}
        for attr in self.attributes:
            out.add(f"group:{attr}")
            path = [p for p in attr.split("/") if p and "=" not in p]
            for i in range(1, len(path) + 1):
                out.add("group:/" + "/".join(path[:i]))
        return out


PLAIN_TEXT_CALLER = Caller(identity="(plain text: no authentication)", administrator=True)


@dataclasses.dataclass(frozen=True)
class Rule:
    who: str                       # "public", "service" or "user"
    roles: tuple[str, ...] = ()    # service: the roles allowed
    needs: Role | None = None      # user: the role needed on the target workspace
    target: str = ""               # the request field naming what the call acts on
    audited: bool = False          # a state-changing call: recorded with its outcome


def _svc(*roles: str) -> Rule:
    return Rule("service", roles=roles)


def _user(needs: Role | None = None, target: str = "", audited: bool = False) -> Rule:
    return Rule("user", needs=needs, target=target, audited=audited)


PUBLIC = Rule("public")
V, O, M = Role.VIEWER, Role.OPERATOR, Role.MANAGER

RULES: dict[str, Rule] = {
    # Repository: what users see and change.
    "RepositoryService/GetWorkspace": _user(V, "name"),
    "RepositoryService/ListWorkspaces": _user(),
    "RepositoryService/WatchWorkspace": _user(V, "name"),
    "RepositoryService/UpdateTerminationTime": _user(M, "name", audited=True),
    "RepositoryService/DeleteWorkspace": _user(M, "name", audited=True),
    "RepositoryService/ListWorkspaceEvents": _user(V, "parent"),
    "RepositoryService/GetUsage": _user(V, "name"),
    "RepositoryService/ExportUsageRecords": _user(),
    "RepositoryService/CreateImage": _user(target="image_id", audited=True),
    "RepositoryService/GetImage": _user(),
    "RepositoryService/ListImages": _user(),
    "RepositoryService/DeleteImage": _user(target="name", audited=True),
    "RepositoryService/RegisterManager": Rule("service", roles=("manager",), audited=True),
    "RepositoryService/HeartbeatManager": _svc("manager"),
    "RepositoryService/ListManagers": _user(),
    # Repository: service to service.
    "RecordService/CreateWorkspaceRecord": _svc("factory"),
    "RecordService/AssignWorkspace": _svc("factory"),
    "RecordService/ReportWorkspaceState": _svc("manager"),
    "RecordService/DeleteWorkspaceRecord": _svc("factory", "manager"),
    "RecordService/ReportWorkspaceProgress": _svc("manager"),
    "RecordService/MoveWorkspace": _svc("manager"),
    "RecordService/ReportUsage": _svc("manager"),
    "RecordService/AuthorizeCall": _svc("factory", "manager"),
    "RecordService/AppendAuditEntry": _svc("factory", "manager"),
    # Access and login.
    "AccessService/GetCaller": _user(),
    "AccessService/ListRoleBindings": _user(V, "name"),
    "AccessService/GrantRole": _user(M, "name", audited=True),
    "AccessService/RevokeRole": _user(M, "name", audited=True),
    "AccessService/ListAuditEntries": _user(),
    "AuthService/CreateChallenge": PUBLIC,
    "AuthService/Login": PUBLIC,
    # Factory.
    "FactoryService/CreateWorkspace": _user(audited=True),
    "FactoryService/GetSiteInfo": PUBLIC,    # what the site offers, and where to log in
    # Manager.
    "ManagerService/DeployWorkspace": _svc("factory"),
    "ManagerService/StartWorkspace": _user(O, "name", audited=True),
    "ManagerService/StopWorkspace": _user(O, "name", audited=True),
    "ManagerService/PauseWorkspace": _user(O, "name", audited=True),
    "ManagerService/ResumeWorkspace": _user(O, "name", audited=True),
    "ManagerService/SuspendWorkspace": _user(O, "name", audited=True),
    "ManagerService/RebootWorkspace": _user(O, "name", audited=True),
    "ManagerService/DestroyWorkspace": _user(M, "name", audited=True),
    "ManagerService/Exec": _user(O, "name", audited=True),
    "ManagerService/MigrateWorkspace": _user(M, "name", audited=True),
    "ManagerService/AcceptMigration": _svc("manager"),
    "ManagerService/FinishMigration": _svc("manager"),
    "ManagerService/AbortMigration": _svc("manager"),
    "TransferService/StartTransfer": _svc("manager"),
    "TransferService/SendChunks": _svc("manager"),
    "TransferService/CommitTransfer": _svc("manager"),
    "TransferService/AbortTransfer": _svc("manager"),
}
PUBLIC_PREFIXES = ("/grpc.health.", "/grpc.reflection.")


def rule_for(method: str) -> Rule | None:
    """`/vws.v1.ManagerService/StopWorkspace` -> its Rule; health and reflection are public."""
    if method.startswith(PUBLIC_PREFIXES):
        return PUBLIC
    return RULES.get(short(method))


def short(method: str) -> str:
    """`/vws.v1.ManagerService/StopWorkspace` -> `ManagerService/StopWorkspace`."""
    return method.rsplit(".", 1)[-1] if method.startswith("/vws.") else method.lstrip("/")


@dataclasses.dataclass(frozen=True)
class Call:
    """What the gate knows of one call, as an authorizer needs it."""
    action: str                # ManagerService/StopWorkspace
    target: str                # workspaces/{id}, or ""
    source: str                # the peer address (of an audited call; "" otherwise)
    authorization: str = ""    # the `authorization` metadata value
    certificate: bytes = b""   # the client's TLS certificate (PEM)
    service: str = ""          # which service answers it (repository, factory, managers/{id})


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    caller: Caller | None
    call: Call
    service: str
    outcome: str               # OK or a status code name
    message: str = ""
    attributes: tuple[str, ...] = ()   # the caller's, when it travelled without its principal

    @property
    def identity(self) -> str:
        return self.caller.identity if self.caller else ""

    @property
    def caller_attributes(self) -> tuple[str, ...]:
        return self.attributes or (self.caller.attributes if self.caller else ())


class Authorizer(Protocol):
    def authorize(self, call: Call, rule: Rule) -> Caller:
        """The caller, allowed to make the call; raises Unauthenticated or PermissionDenied
        (and records the refusal when the rule is audited)."""
    def audit(self, record: AuditRecord) -> None: ...


_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("vws_caller", default=None)


def current() -> Caller:
    """The verified caller of the call being served (PLAIN_TEXT_CALLER when the service runs
    without authentication, or in a unit test calling the service layer directly)."""
    return _current.get() or PLAIN_TEXT_CALLER


def metadata_value(context: grpc.ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return ""


class Gate:
    """Checks each call against RULES. `services`: an Authenticator trusting only the site's
    own CA, for service certificates; `authorizer`: where user calls are decided."""

    def __init__(self, service: str, services: Authenticator, authorizer: Authorizer):
        self.service, self.services, self.authorizer = service, services, authorizer

    def service_caller(self, certificate: bytes | None) -> Caller | None:
        """The vws service, or the site's own administrator, presenting this certificate of the
        site's CA; None for anyone else. Every service knows these itself, so the administrator
        keeps control of a manager while the repository is away."""
        if not certificate:
            return None
        try:
            p = self.services.certificate(certificate)
        except errors.Unauthenticated:
            return None
        if p.identity == admin_identity():
            return Caller(identity=p.identity, principal=p, administrator=True)
        role = service_role(p.identity)
        return Caller(identity=p.identity, principal=p, service_role=role) if role else None

    def enter(self, method: str, request, context: grpc.ServicerContext) -> tuple[Rule, Call | None]:
        """Decides the call (raises when refused) and makes its caller current."""
        rule = rule_for(method)
        if rule is None:
            raise errors.PermissionDenied(f"{method} is not open to anyone at this site")
        _current.set(None)
        if rule.who == "public":
            return rule, None
        cert = tls.peer_certificate(context)
        call = Call(action=short(method), target=str(getattr(request, rule.target, "") or "") if rule.target else "",
                    # the peer's address is for the audit trail alone, and costly to ask grpc for
                    source=(context.peer() or "") if rule.audited else "",
                    authorization=metadata_value(context, AUTHORIZATION),
                    certificate=cert or b"", service=self.service)
        service = self.service_caller(cert)
        if rule.who == "service":
            if service is None or service.service_role not in rule.roles:  # an administrator is not a service
                who = service.identity if service else "a caller without a vws service certificate"
                refusal = errors.PermissionDenied(
                    f"{call.action} is for vws {' or '.join(rule.roles)} services only, and {who} is not one")
                if rule.audited:
                    self.audit(AuditRecord(service, call, self.service, "PERMISSION_DENIED", refusal.message))
                raise refusal
            caller = service
        elif service is not None and not call.authorization:
            caller = service       # a vws service or the administrator: no user check
        else:
            caller = self.authorizer.authorize(call, rule)
        _current.set(caller)
        return rule, call

    def leave(self, rule: Rule, call: Call | None, outcome: str, message: str = "") -> None:
        caller = _current.get()
        _current.set(None)
        if rule.audited and call is not None:
            self.audit(AuditRecord(caller, call, self.service, outcome, message))

    def audit(self, record: AuditRecord) -> None:
        try:
            self.authorizer.audit(record)
        except Exception:  # noqa: BLE001 - the call's answer stands; the log keeps the entry
            log.exception("could not record the audit entry for %s on %s by %s (%s)", record.call.action,
                          record.call.target, record.caller.identity if record.caller else "?", record.outcome)
