"""The policy file: rules on identity and attributes, limits, group quotas, customisation,
reload without restart (a broken file keeps the old policy), and `summary` for whoami."""
from __future__ import annotations

import datetime as dt
import logging
import os

import pytest

from vws.common import model
from vws.common.auth import CredentialKind, Principal
from vws.common.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from vws.repository.policy import GroupUsage, Policy, PolicyFile, WorkspaceRequest

GiB = 1 << 30
EXPIRY = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
POLICY = """
[[rule]]
name = "site-admins"
match.identity = ["/O=vws/OU=users/CN=admin"]
match.credential = ["certificate"]
kinds = ["account", "pool", "sandbox", "vm"]

[[rule]]
name = "atlas-production"
match.fqan = ["/atlas/Role=production"]
match.group = ["/atlas/production"]
kinds = ["account", "sandbox", "vm"]
limits = { memory = "8G", cpu = "4", disk = "50G", bandwidth = "1G", lifetime = "2d" }
quota_group = "atlas-prod"
customise = { unix_group = "atlasprd", image = "images/atlas-el9", environment = { VO = "{vo}", WHO = "{identity}" } }

[[rule]]
name = "atlas-users"
match.fqan = ["/atlas", "/atlas/*"]
match.group = ["/atlas"]
kinds = ["pool"]
limits = { memory = "2G", lifetime = "12h" }
quota_group = "user:{identity}"
customise = { account_pool = "atlas", environment = { VO = "{vo}" } }

[quota.atlas-prod]
workspaces = 10
memory = "64G"
cpu = "16"
reserved_minutes = 14400
"""


def principal(identity="/C=CH/O=Test Grid/CN=Alice", kind=CredentialKind.PROXY, attributes=(), vo="atlas"):
    return Principal(identity, kind, tuple(attributes), EXPIRY, "d" * 64, vo=vo)


PROD = principal(attributes=("/atlas/Role=production", "/atlas"))
USER = principal(attributes=("/atlas/analysis",))
TOKEN_PROD = principal("alice@example", CredentialKind.TOKEN, ("/atlas", "/atlas/production"))


@pytest.fixture
def policy():
    return Policy.parse(POLICY)


def test_the_first_matching_rule_decides_and_customises(policy):
    d = policy.decide(PROD, WorkspaceRequest("vm", memory_bytes=4 * GiB, cpu_millis=2000, lifetime=dt.timedelta(hours=5)))
    assert d.allowed and d.rule == "atlas-production" and not d.reasons
    assert d.customisation.unix_group == "atlasprd"
    assert d.customisation.image == "images/atlas-el9"
    assert d.customisation.environment == {"VO": "atlas", "WHO": "/C=CH/O=Test Grid/CN=Alice"}
    assert d.limits.memory_bytes == 8 * GiB and d.limits.cpu_millis == 4000
    assert d.quota_group == "atlas-prod" and d.quota.workspaces == 10


def test_token_groups_match_their_own_patterns(policy):
    assert policy.decide(TOKEN_PROD, WorkspaceRequest("sandbox")).rule == "atlas-production"
    # an FQAN pattern does not match a token group, nor the other way round
    assert policy.decide(principal("bob@example", CredentialKind.TOKEN, ("/atlas/Role=production",)),
                         WorkspaceRequest("pool")).rule == ""


def test_identity_and_credential_kind(policy):
    admin = principal("/O=vws/OU=users/CN=admin", CredentialKind.CERTIFICATE)
    assert policy.decide(admin, WorkspaceRequest("vm", memory_bytes=60 * GiB)).allowed
    as_token = principal("/O=vws/OU=users/CN=admin", CredentialKind.TOKEN)
    assert not policy.decide(as_token, WorkspaceRequest("vm")).allowed


def test_a_kind_the_rule_does_not_allow_is_refused_with_the_fix(policy):
    d = policy.decide(USER, WorkspaceRequest("vm"))
    assert not d.allowed and d.rule == "atlas-users"
    [r] = d.reasons
    assert r.field == "workspace.spec.kind" and "ask for pool" in r.message
    with pytest.raises(PermissionDenied, match="workspace.spec.kind"):
        d.raise_if_refused()


def test_limits_name_the_field_and_the_most_allowed(policy):
    d = policy.decide(PROD, WorkspaceRequest("vm", memory_bytes=16 * GiB, cpu_millis=8000, disk_bytes=100 * GiB,
                                             bandwidth_bits_per_second=10 ** 10, lifetime=dt.timedelta(days=3)))
    fields = {r.field: r.message for r in d.reasons}
    assert set(fields) == {"workspace.spec.resources.memory_bytes", "workspace.spec.resources.cpu_millis",
                           "workspace.spec.resources.disk_bytes", "workspace.spec.resources.network_bits_per_second",
                           "workspace.spec.lifetime"}
    assert "ask for at most 8G" in fields["workspace.spec.resources.memory_bytes"]
    assert "ask for at most 2d" in fields["workspace.spec.lifetime"]


def test_an_fqan_the_policy_does_not_know_is_refused(policy):
    d = policy.decide(principal(attributes=("/cms/Role=production",), vo="cms"), WorkspaceRequest("account"))
    assert not d.allowed and d.rule == ""
    assert d.reasons[0].field == "credential" and "/cms/Role=production" in d.reasons[0].message


@pytest.mark.parametrize("usage, request_, field", [
    (GroupUsage(workspaces=10), WorkspaceRequest("vm"), "workspaces"),
    (GroupUsage(memory_bytes=60 * GiB), WorkspaceRequest("vm", memory_bytes=8 * GiB), "workspace.spec.resources.memory_bytes"),
    (GroupUsage(cpu_millis=15000), WorkspaceRequest("vm", cpu_millis=2000), "workspace.spec.resources.cpu_millis"),
    (GroupUsage(reserved_minutes=14000), WorkspaceRequest("vm", lifetime=dt.timedelta(hours=8)), "workspace.spec.lifetime"),
])
def test_group_quota_says_what_would_be_exceeded(policy, usage, request_, field):
    d = policy.decide(PROD, request_, usage)
    assert not d.allowed and not d.reasons
    [r] = d.exceeded
    assert r.field == field and "quota group atlas-prod" in r.message
    with pytest.raises(ResourceExhausted) as err:
        d.raise_if_refused()
    assert err.value.violations[0][0] == "quota group atlas-prod"


POOL_RULES = """
[[rule]]
name = "accounts"
match.identity = ["/O=vws/CN=accounts"]
kinds = ["account"]

[[rule]]
name = "pools"
match.identity = ["/O=vws/CN=pools"]
kinds = ["pool"]

[[rule]]
name = "atlas-pool"
match.identity = ["/O=vws/CN=atlas"]
kinds = ["pool"]
customise = { account_pool = "{vo}" }
"""


def test_account_allows_every_account_and_pool_only_pooled_ones():
    policy = Policy.parse(POOL_RULES)
    accounts, pools, atlas = (principal(f"/O=vws/CN={n}", CredentialKind.CERTIFICATE) for n in ("accounts", "pools",
                                                                                                "atlas"))
    assert policy.decide(accounts, WorkspaceRequest("account")).allowed
    assert policy.decide(accounts, WorkspaceRequest("pool")).allowed  # "account" covers an account from a pool
    assert not policy.decide(accounts, WorkspaceRequest("sandbox")).allowed
    assert policy.decide(pools, WorkspaceRequest("pool")).allowed
    [refused] = policy.decide(pools, WorkspaceRequest("account")).reasons
    assert refused.field == "workspace.spec.kind" and "ask for pool (an account leased from an account pool" in \
        refused.message
    # A rule that puts accounts in a pool leases them from it: an account request is a pool one.
    assert policy.decide(atlas, WorkspaceRequest("account")).allowed
    assert not policy.decide(atlas, WorkspaceRequest("vm")).allowed


def test_within_quota_is_allowed(policy):
    usage = GroupUsage(workspaces=9, memory_bytes=56 * GiB, cpu_millis=14000, reserved_minutes=14400 - 60)
    assert policy.decide(PROD, WorkspaceRequest("vm", memory_bytes=8 * GiB, cpu_millis=2000,
                                                lifetime=dt.timedelta(hours=1)), usage).allowed


def test_quota_group_can_be_per_identity(policy):
    d = policy.decide(USER, WorkspaceRequest("pool"))
    assert d.quota_group == "user:/C=CH/O=Test Grid/CN=Alice"
    assert d.customisation.account_pool == "atlas" and d.customisation.environment == {"VO": "atlas"}


def test_request_from_a_workspace_spec():
    spec = model.WorkspaceSpec(kind=model.Kind.UNIX_ACCOUNT, resources=model.Resources(memory_bytes=GiB, cpu_millis=500),
                               lifetime=dt.timedelta(hours=2))
    assert WorkspaceRequest.from_spec(spec, pooled=True) == WorkspaceRequest("pool", GiB, 500, 0, 0,
                                                                             dt.timedelta(hours=2))
    vm = model.WorkspaceSpec(kind=model.Kind.VIRTUAL_MACHINE, software=model.Software(image="images/busybox"))
    assert WorkspaceRequest.from_spec(vm).kind == "vm" and WorkspaceRequest.from_spec(vm).image == "images/busybox"


def test_summary_for_whoami(policy):
    s = policy.summary(PROD)
    assert s["identity"] == PROD.identity and s["attributes"] == ["/atlas/Role=production", "/atlas"]
    assert s["rule"] == "atlas-production" and s["kinds"] == ["account", "sandbox", "vm"]
    assert s["limits"]["memory"] == "8G" and s["limits"]["lifetime"] == "2d"
    assert s["quota"]["memory_bytes"] == "64G" and s["customisation"]["environment"]["VO"] == "atlas"
    assert "no rule" in policy.summary(principal(attributes=("/lhcb",)))["allowed"]


@pytest.mark.parametrize("text, words", [
    ("[[rule]]\nkinds = ['spaceship']", "are not kinds"),
    ("[[rule]]\nlimits = { memory = 'lots' }", "limits.memory"),
    ("[[rule]]\nmatch.credential = 'kerberos'", "certificate, proxy or token"),
    ("[[rule]]\ncolour = 'red'", "unknown key(s) ['colour']"),
    ("[rules]", "unknown top-level key"),
    ("[[rule]\n", "not valid TOML"),
])
def test_a_broken_policy_names_what_is_wrong(text, words):
    with pytest.raises(InvalidArgument) as err:
        Policy.parse(text, "policy.toml")
    assert words in err.value.message


def test_the_file_is_reloaded_when_it_changes_and_a_broken_one_is_kept_out(tmp_path, caplog):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    pf = PolicyFile(path, check_interval=0)
    assert pf.decide(USER, WorkspaceRequest("pool")).allowed
    path.write_text(POLICY.replace('kinds = ["pool"]', 'kinds = ["sandbox"]'))
    os.utime(path, ns=(1, 1))  # a new stamp even within the filesystem's time resolution
    assert not pf.decide(USER, WorkspaceRequest("pool")).allowed
    assert pf.decide(USER, WorkspaceRequest("sandbox")).allowed
    path.write_text("[[rule]]\nkinds = ['spaceship']\n")
    with caplog.at_level(logging.WARNING):
        assert pf.decide(USER, WorkspaceRequest("sandbox")).allowed
    assert "not reloaded" in caplog.text and "spaceship" in pf.error
    path.write_text(POLICY)
    os.utime(path, ns=(2, 2))
    assert pf.decide(USER, WorkspaceRequest("pool")).allowed and pf.error == ""


def test_a_broken_first_file_stops_the_start(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("[[rule]]\nkinds = 'vm'\nlimits = { cpu = 'many' }\n")
    with pytest.raises(InvalidArgument, match="limits.cpu"):
        PolicyFile(path)
