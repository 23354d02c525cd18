"""Security through the real stack (each service its own process, TLS on every port): grid users
with voms-proxy-fake proxies logging in, WLCG tokens, client certificates, the policy deciding
and customising, roles granted and revoked, nothing learned of others' workspaces, every
state-changing call and every refusal in the audit trail, services authenticating each other."""
from __future__ import annotations

import datetime as dt
import grp
import json
import subprocess

import grpc
import pytest

from tests.gridcreds import MISSING_TOOLS, WHY, GridWorld, TokenIssuerWorld
from tests.integration.stack import wait_until
from vws.common import clients, tls
from vws.common.auth import pki
from vws.common.auth.service import login
from vws.v1 import (access_pb2, access_pb2_grpc, factory_pb2, factory_pb2_grpc, manager_pb2, manager_pb2_grpc,
                    repository_pb2, repository_pb2_grpc, workspace_pb2)

pytestmark = pytest.mark.requires(MISSING_TOOLS, WHY)
W = workspace_pb2.Workspace
ACCOUNT = workspace_pb2.WorkspaceSpec.KIND_UNIX_ACCOUNT
SANDBOX = workspace_pb2.WorkspaceSpec.KIND_SANDBOX
AUDIENCE = "https://vws.example.org"
ALICE, BOB = "/O=vws/OU=users/CN=alice", "/O=vws/OU=users/CN=bob"   # site.user("alice"), site.user("bob")
POLICY = """
[[rule]]
name = "administrator"
match.identity = ["/O=vws/OU=users/CN=admin"]
kinds = ["account", "pool", "sandbox", "vm"]

[[rule]]
name = "atlas-production"
match.fqan = ["/atlas/Role=production"]
kinds = ["account", "sandbox"]
limits = { memory = "1G", lifetime = "1d" }
quota_group = "atlas-prod"
customise = { environment = { VO = "{vo}", SITE_ROLE = "production" } }

[quota.atlas-prod]
workspaces = 2

[[rule]]
name = "atlas-users"
match.fqan = ["/atlas", "/atlas/*"]
kinds = ["account"]
limits = { memory = "512M" }

[[rule]]
name = "local-users"
match.identity = ["/O=vws/OU=users/CN=*"]
kinds = ["account"]
quota_group = "{identity}"

[[rule]]
name = "token-users"
match.group = ["/atlas", "/atlas/*"]
kinds = ["account"]
"""


class As:
    """Stubs for one caller: a client certificate, a bearer token, or both absent."""

    def __init__(self, stack, ca: bytes, cert: bytes | None = None, key: bytes | None = None, token: str = ""):
        if cert is None:  # a bearer-token caller presents the site's public client certificate
            cert, key = stack.pki.public_client.cert_pem(), stack.pki.public_client.key_pem()
        creds = tls.channel_credentials(tls.Identity(ca, cert, key))
        if token:
            creds = grpc.composite_channel_credentials(creds, grpc.access_token_call_credentials(token))
        self.channels = [grpc.secure_channel(a, creds, options=clients.OPTIONS)
                         for a in (stack.repository.address, stack.factory.address)]
        self.repo = repository_pb2_grpc.RepositoryServiceStub(self.channels[0])
        self.access = access_pb2_grpc.AccessServiceStub(self.channels[0])
        self.factory = factory_pb2_grpc.FactoryServiceStub(self.channels[1])
        self._creds = creds

    def manager(self, address: str) -> manager_pb2_grpc.ManagerServiceStub:
        ch = grpc.secure_channel(address, self._creds, options=clients.OPTIONS)
        self.channels.append(ch)
        return manager_pb2_grpc.ManagerServiceStub(ch)

    def create(self, kind=ACCOUNT, memory: int = 0, **software) -> W:
        spec = workspace_pb2.WorkspaceSpec(kind=kind, resources=workspace_pb2.ResourceAllocation(memory_bytes=memory),
                                           software=workspace_pb2.SoftwareConfiguration(**software))
        return self.factory.CreateWorkspace(factory_pb2.CreateWorkspaceRequest(workspace=W(spec=spec)),
                                            timeout=120).workspace

    def close(self):
        for ch in self.channels:
            ch.close()


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = GridWorld(tmp_path_factory.mktemp("grid"))
    w.alice = w.user("Alice User")
    w.bob = w.user("Bob User")
    w.voms = w.voms_server("voms.example.org", "atlas")
    w.production = w.proxy(w.alice, w.voms, fqans=("/atlas/Role=production", "/atlas"))
    w.plain_atlas = w.proxy(w.bob, w.voms, fqans=("/atlas",))
    w.cms = w.voms_server("voms.cms.example.org", "cms")
    w.cms_proxy = w.proxy(w.bob, w.cms, vo="cms", fqans=("/cms",))
    w.tokens = TokenIssuerWorld(w.root)
    return w


@pytest.fixture
def site(stack_factory, world, tmp_path):
    """A stack whose repository trusts the grid world's CAs, VOMS servers and token issuer."""
    (tmp_path / "policy.toml").write_text(POLICY)
    (tmp_path / "issuers.toml").write_text(
        f'[[issuer]]\nname = "wlcg"\niss = "{world.tokens.issuer}"\njwks = "{world.tokens.jwks}"\n'
        f'audiences = ["{AUDIENCE}"]\n')
    stack = stack_factory(repository_flags=[
        "--grid-certificates", str(world.ca_dir), "--vomsdir", str(world.vomsdir),
        "--policy", str(tmp_path / "policy.toml"), "--token-issuers", str(tmp_path / "issuers.toml")])
    stack.policy_path = tmp_path / "policy.toml"
    made = []

    def user(name: str) -> As:
        cert, key = stack.pki.issue_user(name)
        a = As(stack, stack.pki.ca_pem(), cert, key)
        made.append(a)
        return a

    def proxy(path) -> As:
        anyone = tls.Identity(stack.pki.ca_pem(), stack.pki.public_client.cert_pem(), stack.pki.public_client.key_pem())
        with grpc.secure_channel(stack.repository.address, tls.channel_credentials(anyone)) as ch:
            token, _, _ = login(ch, path)
        a = As(stack, stack.pki.ca_pem(), token=token)
        made.append(a)
        return a

    def bearer(token: str) -> As:
        a = As(stack, stack.pki.ca_pem(), token=token)
        made.append(a)
        return a
    stack.user, stack.proxy, stack.bearer = user, proxy, bearer
    yield stack
    for a in made:
        a.close()


def test_a_plain_text_client_gets_nothing_from_a_tls_port(site):
    for address in (site.repository.address, site.factory.address, site.managers["m0"].address):
        with grpc.insecure_channel(address) as ch:
            code, _ = code_of(lambda: repository_pb2_grpc.RepositoryServiceStub(ch).ListWorkspaces(
                repository_pb2.ListWorkspacesRequest(), timeout=5))
        assert code is grpc.StatusCode.UNAVAILABLE


def test_plain_text_is_refused_off_loopback(tmp_path):
    from vws.common import errors
    from vws.common.server import create_server
    with pytest.raises(errors.InvalidArgument, match="only on loopback"):
        create_server("0.0.0.0:0", lambda server: [])


def test_no_credential_is_unauthenticated(site):
    """The public client certificate alone (TLS without a client certificate is refused outright)."""
    with grpc.secure_channel(site.repository.address, tls.channel_credentials(tls.Identity(site.pki.ca_pem()))) as ch:
        code, _ = code_of(lambda: repository_pb2_grpc.RepositoryServiceStub(ch).ListWorkspaces(
            repository_pb2.ListWorkspacesRequest(), timeout=5))
    assert code is grpc.StatusCode.UNAVAILABLE
    a = As(site, site.pki.ca_pem())
    try:
        code, details = code_of(lambda: a.repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(), timeout=10))
        assert code is grpc.StatusCode.UNAUTHENTICATED and "no credential" in details
        code, _ = code_of(lambda: a.create())
        assert code is grpc.StatusCode.UNAUTHENTICATED
    finally:
        a.close()


def test_a_proxy_logs_in_and_its_fqans_decide_and_customise(site, world):
    alice = site.proxy(world.production)
    me = alice.access.GetCaller(access_pb2.GetCallerRequest(), timeout=10)
    assert me.caller.identity == world.alice.dn
    assert list(me.caller.attributes)[:2] == ["/atlas/Role=production", "/atlas"]
    assert me.caller.credential_kind == access_pb2.Caller.CREDENTIAL_KIND_PROXY
    assert me.entitlement.rule == "atlas-production" and list(me.entitlement.kinds) == ["account", "sandbox"]
    assert me.entitlement.quota_group == "atlas-prod" and me.entitlement.quota.workspaces == 2
    ws = alice.create(environment={"SITE_ROLE": "mine"})
    assert ws.owner == world.alice.dn
    got = alice.repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name), timeout=10).workspace
    # The policy's environment comes under the request's own; the customisation is on record.
    assert got.spec.software.environment["VO"] == "atlas"
    assert got.spec.software.environment["SITE_ROLE"] == "mine"
    assert got.customisation.rule == "atlas-production" and got.customisation.quota_group == "atlas-prod"
    # Limits: over the rule's memory, a field named and the fix given.
    code, details = code_of(lambda: alice.create(memory=2 << 30))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "memory_bytes" in details and "at most 1G" in details
    # The quota: two workspaces for the group, the third refused.
    alice.create()
    code, details = code_of(lambda: alice.create())
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "atlas-prod" in details


def test_an_fqan_the_policy_does_not_allow_is_refused(site, world):
    bob = site.proxy(world.plain_atlas)  # /atlas: accounts only
    code, details = code_of(lambda: bob.create(kind=SANDBOX))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "sandbox workspaces are not allowed" in details
    cms = site.proxy(world.cms_proxy)     # no rule matches /cms at all
    assert cms.access.GetCaller(access_pb2.GetCallerRequest(), timeout=10).entitlement.rule == ""
    code, details = code_of(lambda: cms.create())
    assert code is grpc.StatusCode.PERMISSION_DENIED and "/cms" in details


def test_the_policy_is_reloaded_without_a_restart(site, world):
    bob = site.proxy(world.plain_atlas)
    code, _ = code_of(lambda: bob.create(kind=SANDBOX))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    site.policy_path.write_text(POLICY.replace('kinds = ["account"]\nlimits = { memory = "512M" }',
                                               'kinds = ["account", "sandbox"]\nlimits = { memory = "512M" }'))
    ws = wait_until(lambda: _try(lambda: bob.create(kind=SANDBOX)), timeout=20, what="the new policy")
    assert ws.spec.kind == SANDBOX


def _try(fn):
    try:
        return fn()
    except grpc.RpcError:
        return None


def test_wlcg_tokens(site, world):
    t = world.tokens
    good = site.bearer(t.token(aud=AUDIENCE))
    me = good.access.GetCaller(access_pb2.GetCallerRequest(), timeout=10).caller
    assert me.identity == "alice-1234@wlcg" and me.credential_kind == access_pb2.Caller.CREDENTIAL_KIND_TOKEN
    assert good.create().owner == "alice-1234@wlcg"
    for bad, why in ((t.token(aud="https://elsewhere.example.org"), "audience"),
                     (t.token(aud=AUDIENCE, issuer="https://rogue.example.org/"), "issuer"),
                     (t.token(aud=AUDIENCE, lifetime=60, issued_ago=3600), "expired")):
        caller = site.bearer(bad)
        code, details = code_of(lambda: caller.repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(), timeout=10))
        assert code is grpc.StatusCode.UNAUTHENTICATED, (why, details)
        assert why in details.lower() or (why == "issuer" and "not trusted" in details.lower()), (why, details)


def test_a_user_learns_nothing_of_anothers_workspace_until_granted_a_role(site):
    alice, bob = site.user("alice"), site.user("bob")
    ws = alice.create()
    missing = ws.name[:-4] + "zzzz"
    # Forbidden and missing look the same to bob.
    c1, d1 = code_of(lambda: bob.repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name), timeout=10))
    c2, d2 = code_of(lambda: bob.repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=missing), timeout=10))
    assert c1 is c2 is grpc.StatusCode.PERMISSION_DENIED
    assert d1.replace(ws.name, "X") == d2.replace(missing, "X")
    assert ws.name not in [w.name for w in bob.repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(),
                                                                     timeout=10).workspaces]
    manager = bob.manager(ws.endpoint.manager_address)
    code, _ = code_of(lambda: manager.StopWorkspace(manager_pb2.StopWorkspaceRequest(name=ws.name), timeout=30))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    code, _ = code_of(lambda: bob.repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name), timeout=30))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    code, _ = code_of(lambda: bob.access.GrantRole(access_pb2.GrantRoleRequest(
        name=ws.name, binding=access_pb2.RoleBinding(member=f"identity:{BOB}",
                                                     role=access_pb2.RoleBinding.ROLE_MANAGER)), timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED

    # Operator: bob sees it, stops and starts it, but may not destroy it or grant.
    alice.access.GrantRole(access_pb2.GrantRoleRequest(name=ws.name, binding=access_pb2.RoleBinding(
        member=f"identity:{BOB}", role=access_pb2.RoleBinding.ROLE_OPERATOR)), timeout=10)
    assert ws.name in [w.name for w in bob.repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(),
                                                                 timeout=10).workspaces]
    assert manager.StopWorkspace(manager_pb2.StopWorkspaceRequest(name=ws.name), timeout=60).workspace.state == \
        W.STATE_READY
    manager.StartWorkspace(manager_pb2.StartWorkspaceRequest(name=ws.name), timeout=60)
    code, _ = code_of(lambda: manager.DestroyWorkspace(manager_pb2.DestroyWorkspaceRequest(name=ws.name), timeout=30))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    acl = alice.access.ListRoleBindings(access_pb2.ListRoleBindingsRequest(name=ws.name), timeout=10).bindings
    assert [(b.member, b.role) for b in acl] == [
        (f"identity:{ALICE}", access_pb2.RoleBinding.ROLE_MANAGER),
        (f"identity:{BOB}", access_pb2.RoleBinding.ROLE_OPERATOR)]

    # Revoked: back to nothing.
    alice.access.RevokeRole(access_pb2.RevokeRoleRequest(name=ws.name, member=f"identity:{BOB}"),
                            timeout=10)
    code, _ = code_of(lambda: bob.repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name), timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_a_group_role_reaches_every_member_of_the_group(site, world):
    owner = site.user("carol")
    ws = owner.create()
    owner.access.GrantRole(access_pb2.GrantRoleRequest(name=ws.name, binding=access_pb2.RoleBinding(
        member="group:/atlas", role=access_pb2.RoleBinding.ROLE_VIEWER)), timeout=10)
    atlas_member = site.proxy(world.plain_atlas)
    assert atlas_member.repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name), timeout=10).workspace.name \
        == ws.name
    cms_member = site.proxy(world.cms_proxy)
    code, _ = code_of(lambda: cms_member.repo.GetWorkspace(repository_pb2.GetWorkspaceRequest(name=ws.name),
                                                           timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED


def test_a_manager_without_a_trusted_certificate_cannot_register(site, tmp_path):
    manager = workspace_pb2.Manager(name="managers/intruder", address="127.0.0.1:1",
                                    kinds=[ACCOUNT], backend="dynamic-accounts")
    request = repository_pb2.RegisterManagerRequest(manager=manager)
    # A certificate of another CA: TLS itself refuses it.
    other = pki.ensure_dir(tmp_path / "other-pki")
    cert, key = other.issue_manager("intruder")
    stranger = As(site, site.pki.ca_pem(), cert, key)
    try:
        code, _ = code_of(lambda: stranger.repo.RegisterManager(request, timeout=10))
        assert code is grpc.StatusCode.UNAVAILABLE
    finally:
        stranger.close()
    # A user of this site's CA is trusted, but is not a manager.
    user = site.user("mallory")
    code, details = code_of(lambda: user.repo.RegisterManager(request, timeout=10))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "manager" in details
    # A manager of this site cannot take the name another manager registered.
    cert, key = site.pki.issue_manager("impostor")
    impostor = As(site, site.pki.ca_pem(), cert, key)
    try:
        taken = workspace_pb2.Manager(name=site.manager_name("m0"), address="127.0.0.1:1", kinds=[ACCOUNT],
                                      backend="dynamic-accounts")
        code, details = code_of(lambda: impostor.repo.RegisterManager(
            repository_pb2.RegisterManagerRequest(manager=taken), timeout=10))
        assert code is grpc.StatusCode.PERMISSION_DENIED and "registered by" in details
    finally:
        impostor.close()
    names = [m.name for m in clients.repository(site.repository.address).ListManagers(
        repository_pb2.ListManagersRequest(), timeout=10).managers]
    assert "managers/intruder" not in names


def test_every_state_change_and_refusal_is_audited(site):
    alice, bob = site.user("alice"), site.user("bob")
    ws = alice.create()
    code_of(lambda: bob.repo.DeleteWorkspace(repository_pb2.DeleteWorkspaceRequest(name=ws.name), timeout=30))
    manager = alice.manager(ws.endpoint.manager_address)
    manager.StopWorkspace(manager_pb2.StopWorkspaceRequest(name=ws.name), timeout=60)

    def trail(**which):
        return clients.access(site.repository.address).ListAuditEntries(
            access_pb2.ListAuditEntriesRequest(**which), timeout=10).entries
    # The factory's and the managers' entries follow their reply from their journals.
    wait_until(lambda: any(e.action == "ManagerService/StopWorkspace" for e in trail(target=ws.name)),
               what="the manager's audit entry")
    entries = trail(target=ws.name)
    seen = [(e.identity, e.action, e.outcome) for e in entries]
    assert (ALICE, "RepositoryService/DeleteWorkspace", "PERMISSION_DENIED") not in seen
    assert (BOB, "RepositoryService/DeleteWorkspace", "PERMISSION_DENIED") in seen
    assert (ALICE, "ManagerService/StopWorkspace", "OK") in seen
    stop = next(e for e in entries if e.action == "ManagerService/StopWorkspace")
    assert stop.source.startswith("ipv4:127.0.0.1:") and stop.service.startswith("managers/")
    wait_until(lambda: any(e.action == "FactoryService/CreateWorkspace" for e in trail(identity=ALICE)),
               what="the factory's audit entry")
    create = trail(identity=ALICE)
    assert any(e.action == "FactoryService/CreateWorkspace" and e.outcome == "OK" for e in create)
    # Others see their own entries only.
    mine = bob.access.ListAuditEntries(access_pb2.ListAuditEntriesRequest(), timeout=10).entries
    assert mine and {e.identity for e in mine} == {BOB}


def test_the_cli_finds_its_credentials_and_shows_who_you_are(site, world):
    r = site.cli("whoami", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["caller"]["identity"] == "/O=vws/OU=users/CN=admin" and doc["caller"]["administrator"]
    env = {k: v for k, v in site.cli_env().items() if k not in ("X509_USER_CERT", "X509_USER_KEY")}
    env["X509_USER_PROXY"] = str(world.production)
    env["XDG_CACHE_HOME"] = str(world.root / "cache")
    r = subprocess.run(site.cli_argv("whoami"), capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert world.alice.dn in r.stdout and "/atlas/Role=production" in r.stdout and "atlas-production" in r.stdout
    r = subprocess.run(site.cli_argv("create", "-o", "json"), capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    name = json.loads(r.stdout)["workspace"]["name"]
    r = subprocess.run(site.cli_argv("grant", name, "/atlas", "viewer", "-o", "json"), capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert {"member": "group:/atlas", "role": "ROLE_VIEWER"}.items() <= json.loads(r.stdout)["bindings"][1].items()
    r = site.cli("audit", "--target", name, "-o", "json")
    assert r.returncode == 0, r.stderr
    actions = [e["action"] for e in json.loads(r.stdout)["entries"]]
    assert "FactoryService/CreateWorkspace" in actions and "AccessService/GrantRole" in actions


def _production_customised(site, world, extra: str) -> As:
    """The policy's production rule customising `extra` (TOML keys) too; alice's production
    proxy once the repository has reloaded it."""
    production = 'customise = { environment = { VO = "{vo}", SITE_ROLE = "production" } }'
    site.policy_path.write_text(POLICY.replace(production, production.replace("customise = {",
                                                                              f"customise = {{ {extra},")))
    alice = site.proxy(world.production)
    wait_until(lambda: alice.access.GetCaller(access_pb2.GetCallerRequest(), timeout=10)
               .entitlement.customisation.unix_group, what="the new policy")
    return alice


def test_the_policy_puts_a_vo_in_its_account_pool_and_unix_group(site, world, unix_group):
    """customise.account_pool: only a manager of that pool takes the workspace; customise.unix_group:
    its account is in that group (and its programs run with it) until it is returned."""
    group, pool = unix_group, f"vp{site.tag}p"
    site.add_manager("p", backend="account-pool", pool_size=2)
    alice = _production_customised(site, world, f'account_pool = "{pool}", unix_group = "{group}"')
    r = site.cli("managers", "-o", "json")
    assert r.returncode == 0, r.stderr
    p = next(m for m in json.loads(r.stdout)["managers"] if m["name"] == site.manager_name("p"))
    assert p["account_pool"] == pool and p["identity"].endswith("CN=manager")  # the site's manager certificate
    # Only the policy names a group: a request that does is refused, naming the field.
    code, details = code_of(lambda: alice.create(unix_group="root"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "spec.software.unix_group" in details
    ws = alice.create()
    assert ws.endpoint.manager == site.manager_name("p"), "m0 leases from no pool"
    assert ws.spec.software.unix_group == group and ws.customisation.account_pool == pool
    account = ws.endpoint.host_identity
    assert account.startswith(pool) and account in grp.getgrnam(group).gr_mem
    r = site.cli("exec", ws.name, "--", "id", "-nG")
    assert r.returncode == 0, r.stderr
    assert group in r.stdout.decode().split()
    alice.manager(ws.endpoint.manager_address).DestroyWorkspace(
        manager_pb2.DestroyWorkspaceRequest(name=ws.name), timeout=60)
    assert account not in grp.getgrnam(group).gr_mem  # the next lease starts without it
    # The placement refusal names the pool when no manager of it is there.
    site.managers["p"].stop()
    code, details = code_of(lambda: alice.create())
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and f"pool {pool}" in details, details


def test_a_unix_group_missing_on_the_host_is_refused_leaving_nothing(site, world):
    alice = _production_customised(site, world, 'unix_group = "vws-no-such-group"')
    before = site.accounts()
    code, details = code_of(lambda: alice.create())
    assert code is grpc.StatusCode.FAILED_PRECONDITION, details
    assert "vws-no-such-group" in details and "groupadd" in details
    assert site.accounts() == before
    assert not alice.repo.ListWorkspaces(repository_pb2.ListWorkspacesRequest(), timeout=10).workspaces
