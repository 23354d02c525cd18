"""WLCG tokens from a local issuer (an RSA key and its JWKS file): accepted with their groups
as attributes; refused for a wrong issuer, a wrong audience, an expired time, a foreign key."""
from __future__ import annotations

import pytest

from tests.gridcreds import TokenIssuerWorld
from vws.common.auth import Authenticator, CredentialKind, TokenIssuer, TokenVerifier, TrustStore
from vws.common.errors import Unauthenticated

AUDIENCE = "https://vws.example.org"


@pytest.fixture
def issuer(tmp_path):
    return TokenIssuerWorld(tmp_path)


@pytest.fixture
def auth(issuer):
    verifier = TokenVerifier([TokenIssuer("example", issuer.issuer, issuer.jwks, (AUDIENCE,))])
    return Authenticator(TrustStore(), tokens=verifier)


def test_a_wlcg_token_gives_its_subject_groups_and_scopes(auth, issuer):
    p = auth.from_call({"authorization": f"Bearer {issuer.token()}"}, None)
    assert p.identity == "alice-1234@example"
    assert p.kind is CredentialKind.TOKEN
    assert p.attributes == ("/atlas", "/atlas/production")
    assert p.vo == "atlas" and p.issuer == issuer.issuer
    assert p.scopes == ("compute.create", "compute.read")


def test_the_any_audience_of_the_profile_is_accepted(auth, issuer):
    assert auth.token(issuer.token(aud="https://wlcg.cern.ch/jwt/v1/any")).identity == "alice-1234@example"


def test_wrong_issuer_is_refused(auth, issuer, tmp_path):
    with pytest.raises(Unauthenticated, match="not trusted here"):
        auth.token(issuer.token(issuer="https://evil.example.org/"))


def test_a_token_signed_by_another_key_is_refused(auth, issuer, tmp_path):
    impostor = TokenIssuerWorld(tmp_path, issuer=issuer.issuer, kid=issuer.kid)
    with pytest.raises(Unauthenticated, match="signature does not match"):
        auth.token(impostor.token())


def test_wrong_audience_is_refused(auth, issuer):
    with pytest.raises(Unauthenticated, match="claim aud"):
        auth.token(issuer.token(aud="https://other-service.example.org"))


def test_expired_token_is_refused(auth, issuer):
    with pytest.raises(Unauthenticated, match="expired"):
        auth.token(issuer.token(lifetime=60, issued_ago=3600))


def test_a_token_outside_the_wlcg_profile_is_refused(auth, issuer):
    with pytest.raises(Unauthenticated, match="wlcg.ver"):
        auth.token(issuer.token(without=("wlcg.ver",)))


def test_garbage_and_missing_credentials_are_refused(auth):
    with pytest.raises(Unauthenticated, match="not a JWT"):
        auth.token("not-a-token")
    with pytest.raises(Unauthenticated, match="Bearer"):
        auth.from_call({"authorization": "Basic abc"}, None)
    with pytest.raises(Unauthenticated, match="no credential"):
        auth.from_call({}, None)


def test_a_checked_token_is_served_from_the_cache(auth, issuer):
    token = issuer.token()
    first = auth.token(token)
    issuer.jwks.write_text('{"keys": []}')  # a fresh check would now fail
    assert auth.token(token) is first
