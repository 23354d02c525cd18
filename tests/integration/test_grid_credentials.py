"""Real grid credentials: proxies with VOMS attribute certificates from Debian's
voms-proxy-fake, checked against a grid CA directory and a vomsdir made at run time, the login
that proves possession of the proxy's key, and the policy deciding on the FQANs they carry."""
from __future__ import annotations

import datetime as dt
import pathlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.gridcreds import (MISSING_TOOLS, PRODUCTION, PRODUCTION_RULE, WHY, GridWorld, chain_der,
                             openssl_subject_hash, resign_proxy)
from vws.common.auth import (Authenticator, CredentialKind, ProxyFile, SessionAuthority, TrustStore, VomsDir,
                             subject_hash)
from vws.common.auth.credentials import REFUSAL_TTL
from vws.common.errors import PermissionDenied, Unauthenticated
from vws.repository.policy import Policy, WorkspaceRequest

pytestmark = pytest.mark.requires(MISSING_TOOLS, WHY)

POLICY = PRODUCTION_RULE + """
[[rule]]
name = "atlas-users"
match.fqan = ["/atlas", "/atlas/*"]
kinds = ["account"]
limits = { memory = "1G" }
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = GridWorld(tmp_path_factory.mktemp("grid"))
    w.alice = w.user("Alice User")
    w.voms = w.voms_server("voms.example.org", "atlas")
    w.production = w.proxy(w.alice, w.voms, fqans=(PRODUCTION, "/atlas"))
    return w


@pytest.fixture
def auth(world):
    trust = TrustStore(world.ca_dir)
    return Authenticator(trust, VomsDir(world.vomsdir, trust), sessions=SessionAuthority(b"k" * 32, "vws-test"))


def refused(auth, proxy: pathlib.Path) -> str:
    with pytest.raises(Unauthenticated) as err:
        auth.proxy(chain_der(proxy))
    return err.value.message


def test_ca_directory_names_are_openssl_subject_hashes(world):
    [path] = list(world.ca_dir.glob("*.0"))
    assert path.name == f"{subject_hash(world.ca.cert.subject)}.0"
    assert subject_hash(world.alice.cert.subject) == openssl_subject_hash(world.alice.cert_path)


def test_proxy_with_voms_attributes_gives_the_users_dn_and_fqans(auth, world):
    p = auth.proxy(chain_der(world.production))
    assert p.identity == "/C=CH/O=Test Grid/CN=Alice User"
    assert p.kind is CredentialKind.PROXY
    assert p.attributes == (PRODUCTION, "/atlas")
    assert p.vo == "atlas"
    assert p.issuer == world.ca.dn
    proxy = x509.load_pem_x509_certificates(world.production.read_bytes())[0]
    assert p.expiry <= proxy.not_valid_after_utc


def test_several_fqans_and_vos(auth, world):
    cms = world.voms_server("voms.cern.example", "cms")
    p = auth.proxy(chain_der(world.proxy(world.alice, cms, vo="cms", fqans=("/cms/Role=pilot", "/cms/uscms"))))
    assert (p.vo, p.attributes) == ("cms", ("/cms/Role=pilot", "/cms/uscms"))


def test_expired_proxy_is_refused(auth, world):
    message = refused(auth, world.proxy(world.alice, world.voms, fqans=("/atlas",), hours=1, past_proxy="2:00"))
    assert "expired" in message and "proxy" in message


def test_expired_attribute_certificate_is_refused(auth, world):
    message = refused(auth, world.proxy(world.alice, world.voms, fqans=("/atlas",), voms_hours=1, past_ac="2:00"))
    assert "attribute certificate of VO atlas expired" in message


def test_proxy_from_an_untrusted_ca_is_refused(auth, world):
    mallory = world.user("Mallory", ca=world.rogue_ca)
    message = refused(auth, world.proxy(mallory, world.voms, fqans=("/atlas",)))
    assert "not a trusted CA" in message and "Rogue CA" in message


def test_attribute_certificate_from_an_unknown_voms_server_is_refused(auth, world):
    stranger = world.voms_server("voms.stranger.example", "atlas", configure=False)
    message = refused(auth, world.proxy(world.alice, stranger, fqans=("/atlas",)))
    assert "voms.stranger.example" in message and "not one of the VO's servers" in message


def test_attribute_certificate_of_an_unconfigured_vo_is_refused(auth, world):
    message = refused(auth, world.proxy(world.alice, world.voms, vo="lhcb", fqans=("/lhcb",)))
    assert "VO lhcb is not configured" in message


def test_tampered_attribute_certificate_is_refused(auth, world, tmp_path):
    # The FQAN is changed and the proxy signed again by the user: only the AC's signature is broken.
    tampered = resign_proxy(world.production, world.alice.key, tmp_path / "tampered.pem",
                            (b"/atlas/Role=production", b"/atlas/Role=lcgadmin00"))
    message = refused(auth, tampered)
    assert "altered" in message


def test_proxy_altered_after_signing_is_refused(auth, world, tmp_path):
    rogue = world.user("Alice User", ca=world.rogue_ca)
    forged = resign_proxy(world.production, rogue.key, tmp_path / "forged.pem", (b"production", b"production"))
    assert "signature" in refused(auth, forged)


def test_login_proves_possession_and_issues_a_session(auth, world):
    proxy = ProxyFile.load(world.production)
    challenge, _ = auth.challenge()
    session = auth.login(challenge, proxy.chain_der, proxy.sign(challenge))
    assert session.principal.attributes == (PRODUCTION, "/atlas")
    assert session.expiry <= session.principal.expiry
    p = auth.from_call([("authorization", f"Bearer {session.token}")], None)
    assert (p.identity, p.attributes) == (world.alice.dn, (PRODUCTION, "/atlas"))


def test_login_with_a_signature_by_another_key_is_refused(auth, world):
    proxy = ProxyFile.load(world.production)
    other = ProxyFile.load(world.proxy(world.alice, world.voms, fqans=(PRODUCTION,)))
    challenge, _ = auth.challenge()
    with pytest.raises(Unauthenticated, match="does not match the proxy's key"):
        auth.login(challenge, proxy.chain_der, other.sign(challenge))


def test_a_challenge_serves_one_login(auth, world):
    proxy = ProxyFile.load(world.production)
    challenge, _ = auth.challenge()
    auth.login(challenge, proxy.chain_der, proxy.sign(challenge))
    with pytest.raises(Unauthenticated, match="already used"):
        auth.login(challenge, proxy.chain_der, proxy.sign(challenge))


def test_a_challenge_of_another_site_is_refused(auth, world):
    other_site = SessionAuthority(b"k" * 32, "another-site")
    proxy = ProxyFile.load(world.production)
    challenge, _ = other_site.challenge(dt.datetime.now(dt.timezone.utc))
    with pytest.raises(Unauthenticated, match="issued for 'another-site'"):
        auth.login(challenge, proxy.chain_der, proxy.sign(challenge))


def test_an_expired_challenge_is_refused(world):
    trust = TrustStore(world.ca_dir)
    clock = [dt.datetime.now(dt.timezone.utc)]
    auth = Authenticator(trust, VomsDir(world.vomsdir, trust), sessions=SessionAuthority(b"k" * 32, "vws-test"),
                         clock=lambda: clock[0])
    proxy = ProxyFile.load(world.production)
    challenge, expiry = auth.challenge()
    clock[0] = expiry + dt.timedelta(seconds=1)
    with pytest.raises(Unauthenticated, match="challenge expired"):
        auth.login(challenge, proxy.chain_der, proxy.sign(challenge))


def test_a_session_ends_with_the_proxy(world):
    trust = TrustStore(world.ca_dir)
    clock = [dt.datetime.now(dt.timezone.utc)]
    auth = Authenticator(trust, VomsDir(world.vomsdir, trust),
                         sessions=SessionAuthority(b"k" * 32, "vws-test", session_ttl=dt.timedelta(days=7)),
                         clock=lambda: clock[0])
    proxy = ProxyFile.load(world.proxy(world.alice, world.voms, fqans=("/atlas",), hours=2))
    challenge, _ = auth.challenge()
    session = auth.login(challenge, proxy.chain_der, proxy.sign(challenge))
    proxy_end = x509.load_der_x509_certificate(proxy.chain_der[0]).not_valid_after_utc
    assert session.expiry <= proxy_end
    clock[0] = proxy_end + dt.timedelta(seconds=1)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.session(session.token)


def test_a_tampered_session_token_is_refused(auth, world):
    proxy = ProxyFile.load(world.production)
    challenge, _ = auth.challenge()
    token = auth.login(challenge, proxy.chain_der, proxy.sign(challenge)).token
    body, mac = token[len("vws1."):].split(".")
    forged = "vws1." + body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
    with pytest.raises(Unauthenticated, match="not issued by this site or was altered"):
        auth.session(forged)


def test_a_verified_proxy_is_served_from_the_cache(auth, world, tmp_path):
    first = auth.proxy(chain_der(world.production))
    # Were it checked again, it would now fail: its CA is gone from the directory.
    trust_dir = tmp_path / "empty"
    trust_dir.mkdir()
    auth.trust.ca_dir = trust_dir
    assert auth.proxy(chain_der(world.production)) is first


def test_client_certificates(auth, world):
    p = auth.certificate(world.alice.cert_path.read_bytes())
    assert (p.identity, p.kind, p.attributes) == (world.alice.dn, CredentialKind.CERTIFICATE, ())
    mallory = world.user("Mallory", ca=world.rogue_ca)
    with pytest.raises(Unauthenticated, match="not a trusted CA"):
        auth.certificate(mallory.cert_path.read_bytes())
    proxy_der = chain_der(world.production)[0]
    with pytest.raises(Unauthenticated, match="log in with the proxy"):
        auth.certificate(proxy_der)


def test_a_refused_certificate_is_remembered_until_the_trusted_cas_change_or_a_minute_passes(tmp_path, monkeypatch):
    world = GridWorld(tmp_path)
    trust = TrustStore(world.ca_dir)
    clock = [dt.datetime.now(dt.timezone.utc)]
    auth = Authenticator(trust, clock=lambda: clock[0])
    carol = world.user("Carol Elsewhere", ca=world.rogue_ca)
    pem = carol.cert_path.read_bytes()
    walks = []
    walk = trust.verify_chain
    monkeypatch.setattr(trust, "verify_chain", lambda *a, **k: walks.append(1) or walk(*a, **k))
    messages = set()
    for _ in range(3):
        with pytest.raises(Unauthenticated, match="Rogue CA, which is not a trusted CA") as err:
            auth.certificate(pem)
        messages.add(err.value.message)
    assert len(walks) == 1 and len(messages) == 1  # the same refusal, without a second examination
    clock[0] += REFUSAL_TTL + dt.timedelta(seconds=1)
    with pytest.raises(Unauthenticated, match="not a trusted CA"):
        auth.certificate(pem)
    assert len(walks) == 2  # a minute on, it is examined again
    # The site comes to trust that CA: the certificate is accepted at once, not a minute later.
    world.trust(world.rogue_ca)
    assert auth.certificate(pem).identity == carol.dn
    assert len(walks) == 3


def test_expired_user_certificate_is_refused(auth, world):
    old = world.user("Old User", days_valid=-1, days_before=30)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.certificate(old.cert_path.read_bytes())


def test_policy_decides_on_the_fqans_of_a_real_proxy(auth, world):
    policy = Policy.parse(POLICY)
    production = auth.proxy(chain_der(world.production))
    d = policy.decide(production, WorkspaceRequest("vm", memory_bytes=4 << 30, lifetime=dt.timedelta(hours=3)))
    assert d.allowed and d.rule == "atlas-production"
    assert (d.customisation.unix_group, d.customisation.environment) == ("atlasprd", {"VO": "atlas"})
    user = auth.proxy(chain_der(world.proxy(world.alice, world.voms, fqans=("/atlas/analysis",))))
    d = policy.decide(user, WorkspaceRequest("vm", memory_bytes=512 << 20))
    assert not d.allowed and d.rule == "atlas-users"
    assert d.reasons[0].field == "workspace.spec.kind" and "ask for account" in d.reasons[0].message
    cms = world.voms_server("voms2.cern.example", "cms")
    stranger = auth.proxy(chain_der(world.proxy(world.alice, cms, vo="cms", fqans=("/cms",))))
    d = policy.decide(stranger, WorkspaceRequest("account"))
    assert not d.allowed and "no rule" in d.reasons[0].message
    with pytest.raises(PermissionDenied, match="/cms"):
        d.raise_if_refused()


def test_the_proxy_file_keeps_its_key_out_of_the_chain(world):
    proxy = ProxyFile.load(world.production)
    assert len(proxy.chain_der) == 2
    assert all(b"PRIVATE" not in c for c in proxy.chain_der)
    assert proxy.key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo) == \
        x509.load_der_x509_certificate(proxy.chain_der[0]).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_login_over_grpc_then_a_call_with_the_session(auth, world):
    from concurrent import futures

    import grpc

    from vws.common.auth.service import AuthServicer, login
    from vws.common.server import ErrorInterceptor
    from vws.v1 import auth_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[ErrorInterceptor()])
    auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            token, expiry, answer = login(channel, world.production)
            assert (answer.identity, list(answer.attributes)) == (world.alice.dn, [PRODUCTION, "/atlas"])
            assert auth.from_call([("authorization", f"Bearer {token}")], None).identity == world.alice.dn
            other = world.proxy(world.user("Mallory", ca=world.rogue_ca), world.voms, fqans=("/atlas",))
            with pytest.raises(grpc.RpcError) as err:
                login(channel, other)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "not a trusted CA" in err.value.details() and "Traceback" not in err.value.details()
    finally:
        server.stop(None)
