"""Proof of possession for proxies, and the session tokens it earns.

gRPC's TLS refuses proxy certificates, so a proxy holder logs in instead: the server hands out
a challenge (a nonce bound to the server's identity and a short validity, MAC'd so the server
keeps no state but the nonces already used); the client signs it, together with the digest of
the chain it presents, with the proxy's private key; the server checks the chain, its VOMS
attributes and the signature, and issues a session token (MAC'd, bound to the principal,
expiring no later than the proxy or its attribute certificate) that later calls carry."""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import os
import pathlib
import re
import secrets
import threading

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography import x509

from .principal import Principal, digest_of
from ..errors import Unauthenticated

CHALLENGE_PREFIX = "vwsc1."
SESSION_PREFIX = "vws1."
_CONTEXT = b"vws-login-v1\n"
_KEY_PEM = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def login_message(challenge: str, chain_der: list[bytes]) -> bytes:
    """What the client signs: the challenge and the chain it presents (so neither can be swapped)."""
    return _CONTEXT + challenge.encode() + b"\n" + digest_of(*chain_der).encode()


def load_or_create_key(path: str | os.PathLike) -> bytes:
    """The server's MAC key (32 random bytes, mode 0600), made on first use."""
    p = pathlib.Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    key = p.read_bytes()
    if len(key) < 32:
        raise Unauthenticated(f"the session key {p} is shorter than 32 bytes; delete it to have a new one made")
    return key


@dataclasses.dataclass(frozen=True)
class Session:
    token: str
    principal: Principal
    expiry: dt.datetime


class SessionAuthority:
    """Issues challenges and session tokens and checks them. Every service that shares the key
    accepts the sessions of the others with the same audience."""

    def __init__(self, key: bytes, audience: str, session_ttl: dt.timedelta = dt.timedelta(hours=1),
                 challenge_ttl: dt.timedelta = dt.timedelta(seconds=60)):
        self.audience = audience
        self.session_ttl = session_ttl
        self.challenge_ttl = challenge_ttl
        # One key, two uses kept apart: a challenge can never pass for a session token.
        self._challenge_key = hmac.new(key, b"challenge", hashlib.sha256).digest()
        self._session_key = hmac.new(key, b"session", hashlib.sha256).digest()
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def _seal(self, prefix: str, key: bytes, payload: dict) -> str:
        body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
        return f"{prefix}{body}.{_b64(hmac.new(key, (prefix + body).encode(), hashlib.sha256).digest())}"

    def _open(self, prefix: str, key: bytes, text: str, what: str) -> dict:
        try:
            body, mac = text[len(prefix):].split(".")
            good = text.startswith(prefix) and hmac.compare_digest(
                _unb64(mac), hmac.new(key, (prefix + body).encode(), hashlib.sha256).digest())
            payload = json.loads(_unb64(body)) if good else None
        except (ValueError, TypeError):
            payload = None
        if not isinstance(payload, dict):
            raise Unauthenticated(f"the {what} was not issued by this site or was altered; "
                                  f"{'ask for a new challenge' if what == 'challenge' else 'log in again'}")
        if payload.get("aud") != self.audience:
            raise Unauthenticated(f"the {what} was issued for {payload.get('aud')!r}, not for {self.audience!r}; "
                                  "log in to this site")
        return payload

    def challenge(self, now: dt.datetime) -> tuple[str, dt.datetime]:
        exp = now + self.challenge_ttl
        return self._seal(CHALLENGE_PREFIX, self._challenge_key,
                          {"n": _b64(secrets.token_bytes(24)), "aud": self.audience,
                           "iat": int(now.timestamp()), "exp": exp.timestamp()}), exp

    def consume_challenge(self, challenge: str, now: dt.datetime) -> None:
        """Checks a challenge and marks it used: each one serves a single login."""
        payload = self._open(CHALLENGE_PREFIX, self._challenge_key, challenge, "challenge")
        ts = now.timestamp()
        if ts >= payload["exp"]:
            raise Unauthenticated("the challenge expired; ask for a new one and sign it at once")
        with self._lock:
            if len(self._used) > 1024:
                self._used = {n: e for n, e in self._used.items() if e > ts}
            if payload["n"] in self._used:
                raise Unauthenticated("the challenge was already used; ask for a new one for each login")
            self._used[payload["n"]] = payload["exp"]

    def issue(self, principal: Principal, now: dt.datetime) -> Session:
        expiry = min(now + self.session_ttl, principal.expiry)
        token = self._seal(SESSION_PREFIX, self._session_key,
                           {"p": principal.to_json(), "aud": self.audience, "iat": int(now.timestamp()),
                            "exp": int(expiry.timestamp()), "sid": _b64(secrets.token_bytes(12))})
        return Session(token, principal, dt.datetime.fromtimestamp(int(expiry.timestamp()), dt.timezone.utc))

    def open(self, token: str, now: dt.datetime) -> Principal:
        payload = self._open(SESSION_PREFIX, self._session_key, token, "session token")
        if now.timestamp() >= payload["exp"]:
            raise Unauthenticated("the session expired; log in again (vws login)")
        p = Principal.from_json(payload["p"])
        return dataclasses.replace(p, expiry=min(p.expiry, dt.datetime.fromtimestamp(payload["exp"],
                                                                                      dt.timezone.utc)))


def verify_possession(leaf: x509.Certificate, challenge: str, chain_der: list[bytes], signature: bytes) -> None:
    """The signature must be by the key of the presented proxy (the chain's leaf)."""
    message = login_message(challenge, chain_der)
    key = leaf.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            raise Unauthenticated(f"the proxy's key type ({type(key).__name__}) is not supported; use RSA or EC")
    except InvalidSignature:
        raise Unauthenticated("the login signature does not match the proxy's key: sign the challenge with the "
                              "private key of the proxy you present") from None


# --- the client's side

@dataclasses.dataclass
class ProxyFile:
    """A proxy as voms-proxy-init writes it (proxy certificate, its key, the rest of the chain)."""
    chain_der: list[bytes]
    key: object

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProxyFile":
        data = pathlib.Path(path).read_bytes()
        key_pem = _KEY_PEM.search(data)
        if key_pem is None:
            raise Unauthenticated(f"{path} holds no private key; give the proxy file itself (voms-proxy-info "
                                  "--path shows where it is)")
        key = serialization.load_pem_private_key(key_pem.group(0), password=None)
        certs = x509.load_pem_x509_certificates(data)
        return cls([c.public_bytes(serialization.Encoding.DER) for c in certs], key)

    def sign(self, challenge: str) -> bytes:
        message = login_message(challenge, self.chain_der)
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(message)
        raise Unauthenticated(f"the proxy's key type ({type(self.key).__name__}) is not supported; use RSA or EC")
