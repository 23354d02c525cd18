"""WLCG bearer tokens (the WLCG common JWT profile): the signature checked against a configured
issuer's keys from a local JWKS file (nothing is fetched), then issuer, audience and times."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import pathlib
import threading

import jwt

from .principal import CredentialKind, Principal
from ..errors import Unauthenticated

ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"  # the profile's "any relying party"
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA")


def _utc(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.timezone.utc):%Y-%m-%d %H:%M:%S}Z"


@dataclasses.dataclass(frozen=True)
class TokenIssuer:
    name: str                     # short name: a token's identity is <sub>@<name>
    issuer: str                   # the `iss` claim, exactly
    jwks: pathlib.Path            # a local JWKS file with the issuer's public keys
    audiences: tuple[str, ...]    # `aud` values this service answers to
    accept_any_audience: bool = True


class TokenVerifier:
    def __init__(self, issuers: list[TokenIssuer], skew: dt.timedelta = dt.timedelta(seconds=60)):
        self.issuers = {i.issuer: i for i in issuers}
        self.skew = skew
        self._keys: dict[str, tuple[int, jwt.PyJWKSet]] = {}
        self._lock = threading.Lock()

    def _keyset(self, issuer: TokenIssuer) -> jwt.PyJWKSet:
        try:
            mtime = os.stat(issuer.jwks).st_mtime_ns
            with self._lock:
                hit = self._keys.get(issuer.issuer)
                if hit and hit[0] == mtime:
                    return hit[1]
                keys = jwt.PyJWKSet.from_dict(json.loads(pathlib.Path(issuer.jwks).read_text()))
                self._keys[issuer.issuer] = (mtime, keys)
                return keys
        except (OSError, ValueError, jwt.PyJWKSetError) as exc:
            raise Unauthenticated(f"the keys of token issuer {issuer.issuer} cannot be read from {issuer.jwks} "
                                  f"({exc}); the site must fix its token issuer configuration") from None

    def verify(self, token: str, digest: str, now: dt.datetime) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not a JWT ({exc}); send a WLCG token as "
                                  "'authorization: Bearer <token>'") from None
        iss = unverified.get("iss", "")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise Unauthenticated(f"token issuer {iss!r} (claim iss) is not trusted here; use a token from one "
                                  f"of: {', '.join(sorted(self.issuers)) or 'no issuer is configured'}")
        keys = self._keyset(issuer)
        kid = header.get("kid")
        candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
        if not candidates:
            raise Unauthenticated(f"the token names key {kid!r}, which issuer {iss} does not have in "
                                  f"{issuer.jwks}; get a fresh token, or the site must update the issuer's keys")
        claims = None
        for key in candidates:
            try:
                claims = jwt.decode(token, key=key.key, algorithms=list(ALGORITHMS),
                                    options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                                             "verify_aud": False, "verify_iss": False})
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise Unauthenticated(f"the token from {iss} is refused: {exc}") from None
        if claims is None:
            raise Unauthenticated(f"the token's signature does not match the keys of issuer {iss}; it was "
                                  "altered or signed by someone else")
        return self._principal(claims, issuer, digest, now)

    def _principal(self, claims: dict, issuer: TokenIssuer, digest: str, now: dt.datetime) -> Principal:
        iss = issuer.issuer
        if "wlcg.ver" not in claims:
            raise Unauthenticated(f"the token from {iss} is not a WLCG token (no wlcg.ver claim); ask the issuer "
                                  "for a token in the WLCG profile")
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else list(aud or [])
        wanted = set(issuer.audiences) | ({ANY_AUDIENCE} if issuer.accept_any_audience else set())
        if not wanted & set(auds):
            raise Unauthenticated(f"the token is for audience {auds or '(none)'} (claim aud), not this service; "
                                  f"ask {iss} for a token with aud={issuer.audiences[0] if issuer.audiences else '?'}")
        ts = now.timestamp()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)):
            raise Unauthenticated(f"the token from {iss} has no expiry (claim exp); tokens must expire")
        if ts >= exp:
            raise Unauthenticated(f"the token expired at {_utc(exp)} (claim exp); get a fresh one from {iss}")
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and ts + self.skew.total_seconds() < nbf:
            raise Unauthenticated(f"the token is not valid before {_utc(nbf)} (claim nbf); check the clocks")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated(f"the token from {iss} names no subject (claim sub)")
        groups = claims.get("wlcg.groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise Unauthenticated("the token's wlcg.groups claim is not a list of group names")
        scopes = tuple(str(claims.get("scope", "")).split())
        vo = groups[0].strip("/").split("/", 1)[0] if groups else ""
        return Principal(identity=f"{sub}@{issuer.name}", kind=CredentialKind.TOKEN, attributes=tuple(groups),
                         expiry=dt.datetime.fromtimestamp(exp, dt.timezone.utc), digest=digest, issuer=iss,
                         vo=vo, scopes=scopes)
