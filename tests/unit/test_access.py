"""The repository's access store (roles, bindings, the audit trail), its local authorizer and
the AccessService, on SQLite and PostgreSQL."""
from __future__ import annotations

import datetime as dt
import time

import pytest
import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.exc import DBAPIError

from vws.common import errors, model
from vws.common.auth import pki
from vws.common.auth.certs import TrustStore, slash_dn
from vws.common.auth.credentials import Authenticator
from vws.common.auth.gate import AuditRecord, Call, Caller, Role, RULES, _current
from vws.common.auth.principal import CredentialKind, Principal
from vws.repository import db, store
from vws.repository.access import AccessStore, AuditEntry, LocalAuthorizer, group_usage
from vws.repository.access_servicer import AccessServicer
from vws.repository.policy import PolicyFile
from vws.v1 import access_pb2

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
ALICE, BOB, CAROL = "/C=CH/O=Test Grid/CN=Alice", "/C=CH/O=Test Grid/CN=Bob", "/C=CH/O=Test Grid/CN=Carol"
W1, W2, W3 = "workspaces/w00000000001x", "workspaces/w00000000002x", "workspaces/w00000000003x"
MISSING = "workspaces/w99999999999x"


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self):
        return self.now


def principal(identity, attributes=(), kind=CredentialKind.PROXY, vo="atlas", issuer="/C=CH/O=Test Grid/CN=CA"):
    return Principal(identity=identity, kind=kind, attributes=tuple(attributes), expiry=T0 + dt.timedelta(days=1),
                     digest=f"d-{identity}-{'-'.join(attributes)}", issuer=issuer, vo=vo)


def user(identity, *attributes):
    return Caller(identity=identity, principal=principal(identity, attributes))


ADMIN = Caller(identity="/O=site/CN=admin", administrator=True)


@pytest.fixture
def uow(database_url):
    engine = db.make_engine(database_url)
    db.upgrade(engine)
    unit = db.UnitOfWork(engine)
    yield unit
    unit.dispose()


@pytest.fixture
def access(uow):
    return AccessStore(uow, clock=Clock())


def add_workspace(uow, name, owner, state=model.State.RUNNING, quota_group="", memory=0, cpu=0,
                  end=T0 + dt.timedelta(hours=1), created=T0):
    spec = model.WorkspaceSpec(kind=model.Kind.UNIX_ACCOUNT,
                               resources=model.Resources(memory_bytes=memory, cpu_millis=cpu))
    with uow(write=True) as session:
        session.add(db.WorkspaceRow(name=name, spec=store.spec_to_json(spec), state=state.value, state_time=T0,
                                    owner=owner, labels={}, create_time=created, update_time=T0,
                                    termination_time=end, quota_group=quota_group))


# ----------------------------------------------------------------------------- roles


def test_roles_owner_identity_group_highest_and_privileged(access, uow):
    add_workspace(uow, W1, ALICE)
    alice, bob = user(ALICE), user(BOB, "/atlas/higgs/Role=production")
    assert access.role_of(alice, W1) is Role.MANAGER
    assert access.role_of(bob, W1) is None
    access.grant(alice, W1, "group:/atlas", Role.VIEWER)           # matches bob's subgroup and role
    assert access.role_of(bob, W1) is Role.VIEWER
    access.grant(alice, W1, f"identity:{BOB}", Role.OPERATOR)      # the highest of bob's bindings wins
    assert access.role_of(bob, W1) is Role.OPERATOR
    access.grant(alice, W1, "group:/atlas/higgs/Role=production", Role.MANAGER)
    assert access.role_of(bob, W1) is Role.MANAGER
    assert access.role_of(user(BOB, "/atlas/higgs"), W1) is Role.OPERATOR   # no production role: identity only
    assert access.role_of(user(CAROL, "/cms"), W1) is None
    assert access.role_of(user(CAROL, "/atlas"), W1) is Role.VIEWER
    assert access.role_of(ADMIN, W1) is Role.MANAGER
    assert access.role_of(Caller("/O=vws/OU=services/CN=factory", service_role="factory"), W1) is Role.MANAGER
    assert access.role_of(ADMIN, MISSING) is None
    assert access.role_of(alice, MISSING) is None


def test_refusal_is_the_same_for_missing_and_forbidden(access, uow):
    add_workspace(uow, W1, ALICE)
    bob = user(BOB)
    with pytest.raises(errors.PermissionDenied) as forbidden:
        access.check(bob, W1, Role.VIEWER, "RepositoryService/GetWorkspace")
    with pytest.raises(errors.PermissionDenied) as missing:
        access.check(bob, MISSING, Role.VIEWER, "RepositoryService/GetWorkspace")
    assert forbidden.value.message.replace(W1, "X") == missing.value.message.replace(MISSING, "X")
    assert "vws grant" in forbidden.value.message and BOB in forbidden.value.message
    access.grant(user(ALICE), W1, f"identity:{BOB}", Role.VIEWER)
    access.check(bob, W1, Role.VIEWER, "RepositoryService/GetWorkspace")
    with pytest.raises(errors.PermissionDenied, match="operator role"):
        access.check(bob, W1, Role.OPERATOR, "ManagerService/StopWorkspace")
    access.check(ADMIN, MISSING, Role.MANAGER, "RepositoryService/DeleteWorkspace")  # the handler says NOT_FOUND


def test_grant_validation_names_the_field(access, uow):
    add_workspace(uow, W1, ALICE)
    alice = user(ALICE)
    for member in ("", "bob", "identity:", "group: ", "identity:a\nb", "identity:" + "x" * 600):
        with pytest.raises(errors.InvalidArgument) as exc:
            access.grant(alice, W1, member, Role.VIEWER)
        assert [f for f, _ in exc.value.violations] == ["binding.member"], member
    with pytest.raises(errors.InvalidArgument) as exc:
        access.grant(alice, W1, "bob", None)
    assert [f for f, _ in exc.value.violations] == ["binding.member", "binding.role"]
    assert "ROLE_VIEWER" in exc.value.message
    with pytest.raises(errors.InvalidArgument) as exc:
        access.grant(alice, "nope", f"identity:{BOB}", Role.VIEWER)
    assert [f for f, _ in exc.value.violations] == ["name"]
    with pytest.raises(errors.NotFound):
        access.grant(ADMIN, MISSING, f"identity:{BOB}", Role.VIEWER)
    with pytest.raises(errors.FailedPrecondition, match="owns"):
        access.grant(alice, W1, f"identity:{ALICE}", Role.VIEWER)


def test_bindings_grant_replaces_revoke_and_owner_protection(access, uow):
    add_workspace(uow, W1, ALICE)
    alice = user(ALICE)
    access.grant(alice, W1, f"identity:{CAROL}", Role.VIEWER)
    access.clock.now = T0 + dt.timedelta(minutes=5)
    out = access.grant(alice, W1, "group:/atlas", Role.OPERATOR)
    assert [(b.member, b.role, b.granted_by) for b in out] == [   # the owner's first, then by member
        (f"identity:{ALICE}", Role.MANAGER, "vws"), ("group:/atlas", Role.OPERATOR, ALICE),
        (f"identity:{CAROL}", Role.VIEWER, ALICE)]
    out = access.grant(ADMIN, W1, f"identity:{CAROL}", Role.MANAGER)  # re-granting replaces the role
    carol = next(b for b in out if b.member == f"identity:{CAROL}")
    assert (carol.role, carol.granted_by, carol.grant_time) == (Role.MANAGER, ADMIN.identity, access.clock.now)
    assert access.bindings(W1) == out
    with pytest.raises(errors.FailedPrecondition, match="cannot be revoked"):
        access.revoke(alice, W1, f"identity:{ALICE}")
    with pytest.raises(errors.NotFound, match="holds no role"):
        access.revoke(alice, W1, f"identity:{BOB}")
    with pytest.raises(errors.InvalidArgument) as exc:
        access.revoke(alice, W1, "carol")
    assert [f for f, _ in exc.value.violations] == ["member"]
    out = access.revoke(alice, W1, f"identity:{CAROL}")
    assert [b.member for b in out] == [f"identity:{ALICE}", "group:/atlas"]
    with pytest.raises(errors.NotFound):
        access.bindings(MISSING)


def test_bindings_go_with_their_workspace(access, uow):
    add_workspace(uow, W1, ALICE)
    access.grant(user(ALICE), W1, f"identity:{BOB}", Role.VIEWER)
    with uow(write=True) as session:
        session.execute(sa.delete(db.WorkspaceRow).where(db.WorkspaceRow.name == W1))
    access.forget(W1)
    with uow() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(db.RoleBindingRow)).scalar() == 0
    assert access.role_of(user(BOB), W1) is None


def test_cache_is_filled_once_and_invalidated(access, uow):
    add_workspace(uow, W1, ALICE)
    bob = user(BOB)
    assert access.role_of(bob, W1) is None
    # A change behind the store's back is not seen until the entry is dropped...
    with uow(write=True) as session:
        session.add(db.RoleBindingRow(workspace=W1, member=f"identity:{BOB}", role="viewer", granted_by="x",
                                      grant_time=T0))
    assert access.role_of(bob, W1) is None
    access.forget(W1)
    assert access.role_of(bob, W1) is Role.VIEWER
    # ...while grants and revokes through the store are seen at once.
    access.grant(user(ALICE), W1, f"identity:{BOB}", Role.OPERATOR)
    assert access.role_of(bob, W1) is Role.OPERATOR
    access.revoke(user(ALICE), W1, f"identity:{BOB}")
    assert access.role_of(bob, W1) is None
    # note_owner primes the entry of a workspace just made.
    access.note_owner(W2, CAROL)
    assert access.role_of(user(CAROL), W2) is Role.MANAGER
    # The cache stays within its bound.
    small = AccessStore(uow, cache_size=2)
    for name in (W1, W2, W3):
        add_workspace(uow, name, ALICE) if name != W1 else None
        small.role_of(user(ALICE), name)
    assert len(small._cache) == 2


def test_check_on_a_cache_hit_costs_microseconds(access, uow):
    add_workspace(uow, W1, ALICE)
    access.grant(user(ALICE), W1, "group:/atlas", Role.VIEWER)
    bob = user(BOB, "/atlas/higgs/Role=production", "/atlas")
    access.check(bob, W1, Role.VIEWER, "RepositoryService/GetWorkspace")
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        access.check(bob, W1, Role.VIEWER, "RepositoryService/GetWorkspace")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per check"


def test_visible_to_filters_a_listing(access, uow):
    add_workspace(uow, W1, ALICE, created=T0)
    add_workspace(uow, W2, BOB, created=T0 + dt.timedelta(seconds=1))
    add_workspace(uow, W3, CAROL, created=T0 + dt.timedelta(seconds=2))
    access.grant(user(BOB), W2, "group:/atlas", Role.VIEWER)
    access.grant(user(CAROL), W3, f"identity:{ALICE}", Role.OPERATOR)

    def listing(caller):
        w = db.WorkspaceRow
        query = sa.select(w.name).where(sa.text(db.NOT_TERMINATED))
        clause = access.visible_to(caller)
        if clause is not None:
            query = query.where(clause)
        with uow() as session:
            return list(session.execute(query.order_by(w.create_time.desc(), w.id.desc())).scalars())

    assert listing(user(ALICE)) == [W3, W1]
    assert listing(user(ALICE, "/atlas/higgs")) == [W3, W2, W1]
    assert listing(user(BOB)) == [W2]
    assert listing(user("/CN=nobody")) == []
    assert listing(ADMIN) == [W3, W2, W1]


def test_group_usage_counts_live_workspaces(access, uow):
    add_workspace(uow, W1, ALICE, quota_group="atlas", memory=2 << 30, cpu=500, end=T0 + dt.timedelta(hours=1))
    add_workspace(uow, W2, BOB, quota_group="atlas", memory=1 << 30, cpu=250, end=T0 - dt.timedelta(hours=1))
    add_workspace(uow, W3, CAROL, quota_group="atlas", memory=8 << 30, state=model.State.TERMINATED)
    add_workspace(uow, "workspaces/w00000000004x", CAROL, quota_group="cms", memory=4 << 30)
    with uow() as session:
        usage = group_usage(session, "atlas", T0)
    assert (usage.workspaces, usage.memory_bytes, usage.cpu_millis, usage.reserved_minutes) == (
        2, 3 << 30, 750, 60.0)
    assert access.group_usage("none").workspaces == 0


# ----------------------------------------------------------------------------- the audit trail


def entry(identity=ALICE, target=W1, outcome="OK", action="ManagerService/StopWorkspace"):
    return AuditEntry(identity=identity, attributes=("/atlas",), source="ipv4:127.0.0.1:1", service="repository",
                      action=action, target=target, outcome=outcome)


def test_audit_append_list_filters_and_pages(access):
    clock = access.clock
    seqs = []
    for i in range(7):
        clock.now = T0 + dt.timedelta(minutes=i)
        seqs.append(access.append(entry(identity=ALICE if i % 2 == 0 else BOB, target=W1 if i < 4 else W2,
                                        outcome="OK" if i != 3 else "PERMISSION_DENIED")))
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    everything, token = access.audit_page(ADMIN)
    assert [e.sequence for e in everything] == seqs and token == ""
    first = everything[0]
    assert (first.identity, first.attributes, first.action, first.time) == (ALICE, ("/atlas",),
                                                                             "ManagerService/StopWorkspace", T0)
    got, token = access.audit_page(ADMIN, page_size=3)
    pages = [got]
    while token:
        got, token = access.audit_page(ADMIN, page_size=3, page_token=token)
        pages.append(got)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [e.sequence for p in pages for e in p] == seqs
    assert [e.sequence for e in access.audit_page(ADMIN, target=W2)[0]] == seqs[4:]
    assert [e.sequence for e in access.audit_page(ADMIN, outcome="PERMISSION_DENIED")[0]] == [seqs[3]]
    assert [e.sequence for e in access.audit_page(ADMIN, identity=BOB)[0]] == seqs[1::2]
    window = access.audit_page(ADMIN, start=T0 + dt.timedelta(minutes=2), end=T0 + dt.timedelta(minutes=4))[0]
    assert [e.sequence for e in window] == seqs[2:4]
    # Others see their own entries only, whatever they ask for.
    assert [e.sequence for e in access.audit_page(user(BOB), identity=ALICE)[0]] == seqs[1::2]
    assert access.audit_page(user(CAROL))[0] == []
    with pytest.raises(errors.InvalidArgument) as exc:
        access.audit_page(ADMIN, page_token="garbage")
    assert [f for f, _ in exc.value.violations] == ["page_token"]
    _, token = access.audit_page(ADMIN, page_size=3)
    with pytest.raises(errors.InvalidArgument):  # a token of another filter
        access.audit_page(ADMIN, page_size=3, page_token=token, target=W2)
    with pytest.raises(errors.InvalidArgument) as exc:
        access.audit_page(ADMIN, start=T0, end=T0)
    assert [f for f, _ in exc.value.violations] == ["end_time"]
    with pytest.raises(errors.InvalidArgument) as exc:
        access.audit_page(ADMIN, page_size=-1)
    assert [f for f, _ in exc.value.violations] == ["page_size"]


def test_audit_entry_from_a_gate_record_and_long_values_cut(access):
    call = Call(action="AccessService/GrantRole", target=W1, source="ipv4:10.0.0.1:5")
    seq = access.append(AuditRecord(user(BOB, "/atlas"), call, "repository", "OK"))
    anonymous = access.append(AuditRecord(None, call, "repository", "UNAUTHENTICATED", "no credential"))
    long = access.append(entry(identity="x" * 700, target="t" * 300))
    rows = {e.sequence: e for e in access.audit_page(ADMIN)[0]}
    assert (rows[seq].identity, rows[seq].attributes, rows[seq].source) == (BOB, ("/atlas",), "ipv4:10.0.0.1:5")
    assert (rows[anonymous].identity, rows[anonymous].outcome, rows[anonymous].message) == (
        "", "UNAUTHENTICATED", "no credential")
    assert (len(rows[long].identity), len(rows[long].target)) == (600, 256)


def test_audit_trail_refuses_update_and_delete(access, uow):
    seq = access.append(entry())
    for statement in (sa.update(db.AuditEntryRow).where(db.AuditEntryRow.sequence == seq).values(outcome="OK2"),
                      sa.delete(db.AuditEntryRow).where(db.AuditEntryRow.sequence == seq),
                      sa.delete(db.AuditEntryRow)):
        with pytest.raises(DBAPIError, match="append-only"):
            with uow(write=True) as session:
                session.execute(statement)
    if uow.engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            with uow(write=True) as session:
                session.execute(sa.text("TRUNCATE audit_entries"))
    assert [(e.sequence, e.outcome) for e in access.audit_page(ADMIN)[0]] == [(seq, "OK")]


# ----------------------------------------------------------------------------- the local authorizer


class FakeAuthenticator:
    """Bearer tokens named after the principals they stand for."""

    def __init__(self, principals):
        self.principals = principals

    def from_call(self, metadata, certificate):
        for _, value in metadata:
            p = self.principals.get(value.removeprefix("Bearer "))
            if p is None:
                raise errors.Unauthenticated("the token is not valid")
            return p
        raise errors.Unauthenticated("no credential")


def test_local_authorizer_decides_and_records_refusals(access, uow):
    add_workspace(uow, W1, ALICE)
    auth = LocalAuthorizer(FakeAuthenticator({"alice": principal(ALICE), "bob": principal(BOB, ["/atlas"]),
                                              "root": principal("/CN=root")}), access, {"/CN=root"})
    stop = RULES["ManagerService/StopWorkspace"]

    def call(token, target=W1):
        return Call("ManagerService/StopWorkspace", target, "ipv4:1", f"Bearer {token}" if token else "")
    alice = auth.authorize(call("alice"), stop)
    assert (alice.identity, alice.administrator, alice.service_role) == (ALICE, False, "")
    assert auth.authorize(call("alice"), stop) is alice   # the caller is kept while its principal is
    assert auth.authorize(call("root"), stop).administrator
    with pytest.raises(errors.PermissionDenied):
        auth.authorize(call("bob"), stop)
    with pytest.raises(errors.PermissionDenied):
        auth.authorize(call("bob", MISSING), stop)
    with pytest.raises(errors.Unauthenticated):
        auth.authorize(call("mallory"), stop)
    with pytest.raises(errors.Unauthenticated):
        auth.authorize(call(""), RULES["RepositoryService/GetWorkspace"])   # not audited
    with pytest.raises(errors.PermissionDenied):
        auth.authorize(call("bob"), RULES["RepositoryService/GetWorkspace"])  # not audited
    auth.audit(AuditRecord(alice, call("alice"), "repository", "OK"))
    trail = [(e.identity, e.outcome, e.target) for e in access.audit_page(ADMIN)[0]]
    assert trail == [(BOB, "PERMISSION_DENIED", W1), (BOB, "PERMISSION_DENIED", MISSING), ("", "UNAUTHENTICATED", W1),
                     (ALICE, "OK", W1)]


def test_local_authorizer_trusts_service_roles_only_from_the_local_ca(tmp_path):
    site, other = pki.ensure_dir(tmp_path / "site"), pki.ensure_dir(tmp_path / "other")
    anchors = [x509.load_pem_x509_certificate(p.ca_pem()) for p in (site, other)]
    # No role is needed by the rule below: the store is never asked.
    auth = LocalAuthorizer(Authenticator(TrustStore(anchors=anchors)), AccessStore(uow=None), (),
                           local_ca_dn=slash_dn(anchors[0].subject))

    def cert(pair):
        return Call("RepositoryService/ListWorkspaces", "", "ipv4:1", certificate=pair.cert_pem())
    rule = RULES["RepositoryService/ListWorkspaces"]
    assert auth.authorize(cert(site.services["factory"]), rule).service_role == "factory"
    assert auth.authorize(cert(site.services["manager"]), rule).service_role == "manager"
    assert auth.authorize(cert(site.admin), rule).administrator
    impostor = auth.authorize(cert(other.services["factory"]), rule)   # same DN, another CA
    assert (impostor.service_role, impostor.administrator, impostor.privileged) == ("", False, False)
    assert not auth.authorize(cert(other.admin), rule).administrator


# ----------------------------------------------------------------------------- the servicer


POLICY = """
[[rule]]
name = "atlas"
match = { fqan = "/atlas*" }
kinds = ["account", "sandbox"]
limits = { memory = "4GiB", cpu = "2000m", lifetime = "2d" }
quota_group = "{vo}-users"
quota = { workspaces = 5, memory = "16GiB" }
customise = { unix_group = "{vo}", environment = { VO = "{vo}" } }
"""


def test_servicer_get_caller_bindings_and_audit(access, uow, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    servicer = AccessServicer(access, PolicyFile(path))
    add_workspace(uow, W1, ALICE, quota_group="atlas-users", memory=1 << 30, end=T0 + dt.timedelta(minutes=30))
    alice = user(ALICE, "/atlas/Role=NULL")
    token = _current.set(alice)
    try:
        got = servicer.GetCaller(access_pb2.GetCallerRequest(), None)
        assert (got.caller.identity, got.caller.credential_kind, list(got.caller.attributes)) == (
            ALICE, access_pb2.Caller.CREDENTIAL_KIND_PROXY, ["/atlas/Role=NULL"])
        e = got.entitlement
        assert (e.rule, list(e.kinds), e.quota_group, e.quota.workspaces, e.quota.memory_bytes) == (
            "atlas", ["account", "sandbox"], "atlas-users", 5, 16 << 30)
        assert (e.max_resources.memory_bytes, e.max_resources.cpu_millis, e.max_lifetime.seconds) == (
            4 << 30, 2000, 2 * 86400)
        assert (e.usage.workspaces, e.usage.memory_bytes, e.usage.reserved_minutes) == (1, 1 << 30, 30.0)
        assert (e.customisation.unix_group, dict(e.customisation.environment)) == ("atlas", {"VO": "atlas"})
        granted = servicer.GrantRole(access_pb2.GrantRoleRequest(name=W1, binding=access_pb2.RoleBinding(
            member=f"identity:{BOB}", role=access_pb2.RoleBinding.ROLE_OPERATOR)), None)
        assert [(b.member, b.role, b.granted_by) for b in granted.bindings] == [
            (f"identity:{ALICE}", access_pb2.RoleBinding.ROLE_MANAGER, "vws"),
            (f"identity:{BOB}", access_pb2.RoleBinding.ROLE_OPERATOR, ALICE)]
        with pytest.raises(errors.InvalidArgument, match="binding.role"):
            servicer.GrantRole(access_pb2.GrantRoleRequest(name=W1, binding=access_pb2.RoleBinding(
                member=f"identity:{BOB}")), None)
        listed = servicer.ListRoleBindings(access_pb2.ListRoleBindingsRequest(name=W1), None)
        assert listed.bindings == granted.bindings
        revoked = servicer.RevokeRole(access_pb2.RevokeRoleRequest(name=W1, member=f"identity:{BOB}"), None)
        assert len(revoked.bindings) == 1
        access.append(entry(identity=ALICE))
        access.append(entry(identity=BOB))
        trail = servicer.ListAuditEntries(access_pb2.ListAuditEntriesRequest(identity=BOB), None)
        assert [x.identity for x in trail.entries] == [ALICE]
        _current.set(user(CAROL, "/cms"))
        nobody = servicer.GetCaller(access_pb2.GetCallerRequest(), None).entitlement
        assert nobody.rule == "" and "no rule" in nobody.reason
    finally:
        _current.reset(token)
    assert AccessServicer(access, None).GetCaller(access_pb2.GetCallerRequest(), None).caller.administrator
