"""Who may do what to which workspace, and the record of what was done: the repository's role
bindings and audit trail, and the Authorizer the repository's own gate uses.

A caller's role on a workspace: manager for its owner and for privileged callers (site
administrators, vws services); otherwise the highest role bound to any member the caller is
(`identity:<id>`, `group:<g>` for each group its attributes fall in). Each workspace's owner
and bindings are cached in memory after the first read, so that the check on every call costs a
dictionary lookup; grants and revokes through this store drop the entry. The first read also
answers the workspace's wire message, handed to Get's read cache: a user's Get costs one query."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..common import errors, model, names
from ..common.auth import pki
from ..common.auth.credentials import AUTHORIZATION, Authenticator
from ..common.auth.gate import AuditRecord, Call, Caller, Role, Rule
from ..common.auth.principal import CredentialKind
from . import db, paging, store
from .db import AuditEntryRow, RoleBindingRow, WorkspaceRow
from .policy import GroupUsage

log = logging.getLogger("vws.repository.access")

OWNER_GRANTOR = "vws"       # who the owner's binding is granted by
MAX_MEMBER = 600
MEMBER_PREFIXES = ("identity:", "group:")
_VERBS = {Role.VIEWER: "see", Role.OPERATOR: "operate", Role.MANAGER: "manage"}
_ROLE_BY_NAME = {r.cli_name: r for r in Role}
# Column widths of audit_entries: a long value is cut rather than the entry lost.
_AUDIT_WIDTHS = {"identity": 600, "source": 256, "service": 128, "action": 128, "target": 256, "outcome": 32}


@dataclasses.dataclass(frozen=True)
class Binding:
    member: str                       # identity:<id> or group:<g>
    role: Role
    granted_by: str
    grant_time: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    """One entry of the trail. `sequence` and `time` are set by the store when appended."""
    identity: str = ""
    attributes: tuple[str, ...] = ()
    source: str = ""
    service: str = ""
    action: str = ""
    target: str = ""
    outcome: str = ""
    message: str = ""
    sequence: int = 0
    time: dt.datetime | None = None

    @classmethod
    def of(cls, record: AuditRecord) -> "AuditEntry":
        caller = record.caller
        return cls(identity=caller.identity if caller else "", attributes=tuple(caller.attributes) if caller else (),
                   source=record.call.source, service=record.service, action=record.call.action,
                   target=record.call.target, outcome=record.outcome, message=record.message)


def check_member(member: str, field: str = "binding.member") -> str:
    """`identity:<DN or sub@issuer>` or `group:<FQAN or group>`; InvalidArgument naming the fix."""
    example = "identity:/C=CH/O=Test Grid/CN=Alice, or group:/atlas/Role=production"
    if not member:
        raise errors.InvalidArgument(f"is empty; give who gets the role, like {example}", field)
    if len(member) > MAX_MEMBER:
        raise errors.InvalidArgument(f"is {len(member)} characters long; a member has at most {MAX_MEMBER}", field)
    if any(c in member for c in "\r\n\0"):
        raise errors.InvalidArgument("holds a line break or NUL; give one member on one line", field)
    prefix = next((p for p in MEMBER_PREFIXES if member.startswith(p)), None)
    if prefix is None:
        raise errors.InvalidArgument(f"{member!r} names no kind of member; start it with identity: or group:, "
                                     f"like {example}", field)
    if not member[len(prefix):].strip() or member != member.strip():
        raise errors.InvalidArgument(f"{member!r} has nothing after {prefix} or has surrounding spaces; "
                                     f"like {example}", field)
    return member


def _resource(key: str):
    return sa.cast(WorkspaceRow.spec[("resources", key)].as_string(), sa.BigInteger)  # 64-bit


# Built once: every create of a verified caller counts its group's holdings with it.
_GROUP_HOLDINGS = sa.select(_resource("memory_bytes"), _resource("cpu_millis"), WorkspaceRow.termination_time).where(
    WorkspaceRow.quota_group == sa.bindparam("group"), WorkspaceRow.state != model.State.TERMINATED.value)


def group_usage(session: Session, group: str, now: dt.datetime) -> GroupUsage:
    """What a quota group holds now: its workspaces that are not TERMINATED, their memory and
    CPU, and the minutes of lifetime they have left."""
    rows = session.connection().execute(_GROUP_HOLDINGS, {"group": group}).all()
    minutes = sum(max((end - now).total_seconds(), 0.0) for _, _, end in rows if end is not None) / 60
    return GroupUsage(workspaces=len(rows), memory_bytes=sum(m or 0 for m, _, _ in rows),
                      cpu_millis=sum(c or 0 for _, c, _ in rows), reserved_minutes=minutes)


class AccessStore:
    def __init__(self, uow: db.UnitOfWork, clock: Callable[[], dt.datetime] = model.utcnow,
                 cache_size: int = 100_000, tokens: paging.PageTokens | None = None, snapshots=None):
        """`tokens`: the repository's page tokens (None: a key of this process only); `snapshots`:
        Get's read cache (a workspaces.ReadCache), given the wire message each first check reads."""
        self.uow, self.clock, self.cache_size = uow, clock, cache_size
        self.tokens = tokens or paging.PageTokens.of_this_process()
        self.snapshots = snapshots
        # name -> (owner, {member: role}); only workspaces that exist are cached.
        self._cache: dict[str, tuple[str, dict[str, Role]]] = {}
        self._lock = threading.Lock()
        # Bumped by every invalidation: a read that began before it does not fill the cache.
        self._generation = 0

    # ------------------------------------------------------------------------- the cache

    def _entry(self, name: str) -> tuple[str, dict[str, Role]] | None:
        entry = self._cache.get(name)
        if entry is not None:
            return entry
        generation = self._generation
        snapshot_generation = self.snapshots.generation if self.snapshots is not None else 0
        with self.uow.point_read() as connection:
            found = store.read_access(connection, self.uow.engine.dialect.name, name)
        if found is None:
            return None
        owner, snapshot, bound = found
        if self.snapshots is not None:
            self.snapshots.put(name, snapshot, snapshot_generation)
        entry = (owner, {m: _ROLE_BY_NAME[r] for m, r in bound})
        with self._lock:
            if generation == self._generation:
                if len(self._cache) >= self.cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[name] = entry
        return entry

    def forget(self, name: str) -> None:
        """The workspace's record is gone (or changed owner): read it again next time."""
        with self._lock:
            self._generation += 1
            self._cache.pop(name, None)

    def note_owner(self, name: str, owner: str) -> None:
        """A workspace was just made, with no bindings yet: its first check needs no read."""
        with self._lock:
            self._generation += 1
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[name] = (owner, {})

    # ------------------------------------------------------------------------- roles

    def role_of(self, caller: Caller, name: str) -> Role | None:
        entry = self._entry(name)
        if entry is None:
            return None
        owner, bound = entry
        if caller.privileged or owner == caller.identity:
            return Role.MANAGER
        if not bound:
            return None
        return max((bound[m] for m in caller.members() if m in bound), default=None)

    def check(self, caller: Caller, name: str, needed: Role, action: str) -> None:
        """PermissionDenied unless the caller holds `needed` on the workspace; the same answer
        whether it exists or not. Privileged callers always pass (a missing workspace is then
        the handler's NOT_FOUND)."""
        if caller.privileged:
            return
        role = self.role_of(caller, name)
        if role is None or role < needed:
            raise errors.PermissionDenied(
                f"{caller.identity} may not {_VERBS[needed]} {name or '(no workspace named)'} ({action} needs the "
                f"{needed.cli_name} role), or it does not exist; its owner can grant you a role (vws grant)")

    def visible_to(self, caller: Caller) -> sa.ColumnElement[bool] | None:
        """A WHERE clause on workspaces for those the caller may see; None: every one."""
        if caller.privileged:
            return None
        w, b = WorkspaceRow, RoleBindingRow
        granted = sa.select(b.workspace).where(b.member.in_(sorted(caller.members())))
        return sa.or_(w.owner == caller.identity, w.name.in_(granted))

    def bindings(self, name: str) -> list[Binding]:
        """The owner's binding first, then the others by member."""
        names.parse_workspace_name(name)
        with self.uow() as session:
            return self._bindings(session, name)

    def _bindings(self, session: Session, name: str) -> list[Binding]:
        workspace = session.execute(sa.select(WorkspaceRow.owner, WorkspaceRow.create_time)
                                    .where(WorkspaceRow.name == name)).one_or_none()
        if workspace is None:
            raise errors.NotFound(f"workspace {name} does not exist")
        out = [Binding(f"identity:{workspace.owner}", Role.MANAGER, OWNER_GRANTOR, workspace.create_time)] \
            if workspace.owner else []
        b = RoleBindingRow
        for row in session.execute(sa.select(b).where(b.workspace == name).order_by(b.member)).scalars():
            out.append(Binding(row.member, _ROLE_BY_NAME[row.role], row.granted_by, row.grant_time))
        return out

    def _owner_for_update(self, session: Session, name: str) -> str:
        owner = session.execute(sa.select(WorkspaceRow.owner).where(WorkspaceRow.name == name)
                                .with_for_update()).scalar_one_or_none()
        if owner is None:
            raise errors.NotFound(f"workspace {name} does not exist")
        return owner

    def grant(self, by: Caller, name: str, member: str, role: Role | None) -> list[Binding]:
        """Grants (or changes) a member's role; returns every binding after the change."""
        names.parse_workspace_name(name)
        violations = []
        try:
            check_member(member)
        except errors.InvalidArgument as exc:
            violations += exc.violations
        if not isinstance(role, Role):
            violations.append(("binding.role", "is unspecified; give ROLE_VIEWER, ROLE_OPERATOR or ROLE_MANAGER "
                                               "(viewer, operator or manager)"))
        if violations:
            raise errors.InvalidArgument(violations)
        values = {"workspace": name, "member": member, "role": role.cli_name, "granted_by": by.identity[:MAX_MEMBER],
                  "grant_time": self.clock()}
        with self.uow(write=True) as session:
            owner = self._owner_for_update(session, name)
            if member == f"identity:{owner}":
                raise errors.FailedPrecondition(f"{member} owns {name} and so holds the manager role already; "
                                                "grant roles to others")
            dialect = postgresql if self.uow.engine.dialect.name == "postgresql" else sqlite
            session.execute(dialect.insert(RoleBindingRow).values(**values).on_conflict_do_update(
                index_elements=["workspace", "member"],
                set_={"role": values["role"], "granted_by": values["granted_by"], "grant_time": values["grant_time"]}))
            out = self._bindings(session, name)
        self.forget(name)
        return out

    def revoke(self, by: Caller, name: str, member: str) -> list[Binding]:
        """Takes a member's role back; returns every binding after the change."""
        names.parse_workspace_name(name)
        check_member(member, "member")
        with self.uow(write=True) as session:
            owner = self._owner_for_update(session, name)
            if member == f"identity:{owner}":
                raise errors.FailedPrecondition(f"{member} owns {name}; an owner's manager role cannot be revoked")
            b = RoleBindingRow
            gone = session.execute(sa.delete(b).where(b.workspace == name, b.member == member)).rowcount
            if not gone:
                raise errors.NotFound(f"{member} holds no role on {name}; list its role bindings for the members "
                                      "that do")
            out = self._bindings(session, name)
        log.info("%s revoked the role of %s on %s", by.identity, member, name)
        self.forget(name)
        return out

    # ------------------------------------------------------------------------- usage

    def group_usage(self, group: str) -> GroupUsage:
        with self.uow() as session:
            return group_usage(session, group, self.clock())

    # ------------------------------------------------------------------------- the audit trail

    def append(self, record: AuditRecord | AuditEntry) -> int:
        """Adds one entry (its time: its own, or now); returns its sequence."""
        e = AuditEntry.of(record) if isinstance(record, AuditRecord) else record
        row = AuditEntryRow(time=e.time or self.clock(), attributes=list(e.attributes), message=e.message,
                            **{k: (getattr(e, k) or "")[:n] for k, n in _AUDIT_WIDTHS.items()})
        with self.uow(write=True) as session:
            session.add(row)
            session.flush()
            return row.sequence

    def audit_page(self, caller: Caller, identity: str = "", target: str = "", outcome: str = "",
                   start: dt.datetime | None = None, end: dt.datetime | None = None, page_size: int = 0,
                   page_token: str = "") -> tuple[list[AuditEntry], str]:
        """Oldest first. A caller who is not privileged sees only their own entries, whatever
        identity they ask for."""
        size = paging.checked_page_size(page_size)
        if not caller.privileged:
            identity = caller.identity
        if start is not None and end is not None and end <= start:
            raise errors.InvalidArgument(f"{end.isoformat()} is not after start_time ({start.isoformat()}); give a "
                                         "later end, or none", "end_time")
        what = paging.listing("audit", identity=identity, target=target, outcome=outcome,
                              start=start.isoformat() if start else None, end=end.isoformat() if end else None)
        after = self.tokens.sequence_after(page_token, what)
        a = AuditEntryRow
        query = sa.select(a).where(a.sequence > after)
        for column, value in ((a.identity, identity), (a.target, target), (a.outcome, outcome)):
            if value:
                query = query.where(column == value)
        if start is not None:
            query = query.where(a.time >= start)
        if end is not None:
            query = query.where(a.time < end)
        with self.uow() as session:
            rows = list(session.execute(query.order_by(a.sequence).limit(size + 1)).scalars())
        out = [AuditEntry(identity=r.identity, attributes=tuple(r.attributes or ()), source=r.source,
                          service=r.service, action=r.action, target=r.target, outcome=r.outcome, message=r.message,
                          sequence=r.sequence, time=r.time) for r in rows[:size]]
        token = self.tokens.sequence_token(what, rows[size - 1].sequence) if len(rows) > size else ""
        return out, token


class LocalAuthorizer:
    """The repository's own Authorizer: it verifies credentials, holds the role bindings and
    keeps the audit trail, so it decides without asking anyone.

    `administrators`: identities that may see and act on everything. `local_ca_dn`: the site's
    own CA; only a certificate it issued makes a caller a vws service or the built-in admin."""

    def __init__(self, authenticator: Authenticator, access: AccessStore, administrators: Iterable[str] = (),
                 local_ca_dn: str = "", service: str = "repository"):
        self.authenticator, self.access, self.service = authenticator, access, service
        self.administrators = frozenset(administrators)
        self.local_ca_dn = local_ca_dn
        self._callers: dict[str, Caller] = {}  # principal digest -> Caller, while the principal is the same

    def caller_of(self, call: Call) -> Caller:
        metadata = [(AUTHORIZATION, call.authorization)] if call.authorization else []
        principal = self.authenticator.from_call(metadata, call.certificate or None)
        cached = self._callers.get(principal.digest)
        if cached is not None and cached.principal is principal:
            return cached
        local = bool(self.local_ca_dn) and principal.kind is CredentialKind.CERTIFICATE \
            and principal.issuer == self.local_ca_dn
        caller = Caller(identity=principal.identity, principal=principal,
                        administrator=principal.identity in self.administrators
                        or (local and principal.identity == pki.admin_identity()),
                        service_role=(pki.service_role(principal.identity) or "") if local else "")
        if len(self._callers) >= 10_000:
            self._callers.clear()
        self._callers[principal.digest] = caller
        return caller

    def authorize(self, call: Call, rule: Rule) -> Caller:
        caller = None
        try:
            caller = self.caller_of(call)
            if rule.needs is not None:
                self.access.check(caller, call.target, rule.needs, call.action)
            return caller
        except (errors.Unauthenticated, errors.PermissionDenied) as refusal:
            if rule.audited:
                outcome = "UNAUTHENTICATED" if isinstance(refusal, errors.Unauthenticated) else "PERMISSION_DENIED"
                try:
                    self.access.append(AuditRecord(caller, call, call.service or self.service, outcome, refusal.message))
                except Exception:  # noqa: BLE001 - the refusal stands; the log keeps the entry
                    log.exception("could not record the refusal of %s on %s by %s (%s)", call.action, call.target,
                                  caller.identity if caller else "?", outcome)
            raise

    def audit(self, record: AuditRecord) -> None:
        self.access.append(record)
