"""One entry point from any credential to a Principal, with verified principals cached by the
credential's digest until they expire: a repeat call costs a hash and a dictionary lookup. A
refused client certificate is remembered too, for a minute or until the trusted CAs change:
every service asks its service authenticator about each caller's certificate, and a user's
from another CA would otherwise be parsed and walked again, to the same refusal, on each call."""
from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Mapping
from typing import Callable, Iterable

from cryptography import x509

from .certs import TrustStore, load_pem_or_der, slash_dn
from .pki import public_client_identity
from .principal import CredentialKind, Principal, digest_of
from .proxy import proxy_info, verify_proxy_chain
from .session import SESSION_PREFIX, Session, SessionAuthority, verify_possession
from .tokens import TokenVerifier
from .voms import VomsDir
from ..errors import Unauthenticated

PUBLIC_CLIENT = public_client_identity()  # the site's public client certificate: names no one
AUTHORIZATION = "authorization"  # gRPC metadata key: "Bearer <WLCG token or vws session token>"


REFUSAL_TTL = dt.timedelta(minutes=1)  # how long a refused certificate stays refused unexamined


class ExpiringCache:
    """key -> an entry with an `expiry`, each dropped once expired; bounded (the oldest go first)."""

    def __init__(self, max_entries: int = 10000):
        self.max_entries = max_entries
        self._entries: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: dt.datetime):
        entry = self._entries.get(key)
        if entry is not None and entry.expiry <= now:
            self._entries.pop(key, None)
            return None
        return entry

    def put(self, key: str, entry) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                now = dt.datetime.now(dt.timezone.utc)
                self._entries = {k: v for k, v in self._entries.items() if v.expiry > now}
                while len(self._entries) >= self.max_entries:
                    self._entries.pop(next(iter(self._entries)))
            self._entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)


class PrincipalCache(ExpiringCache):
    """digest -> Principal, until the principal expires."""

    def put(self, principal: Principal, key: str | None = None) -> None:
        super().put(key or principal.digest, principal)


@dataclasses.dataclass(frozen=True)
class _Refusal:
    message: str
    expiry: dt.datetime
    trust: object  # the trust store's generation the refusal was made under


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Authenticator:
    """Verifies client certificates, proxies (through login), WLCG tokens and session tokens.

    `trust` anchors certificates and proxies; `vomsdir` holds the VOMS servers; `tokens` the
    token issuers; `sessions` the login authority (none: no proxy login). `clock` is for tests."""

    def __init__(self, trust: TrustStore, vomsdir: VomsDir | None = None, tokens: TokenVerifier | None = None,
                 sessions: SessionAuthority | None = None, clock: Callable[[], dt.datetime] = _utcnow,
                 skew: dt.timedelta = dt.timedelta(minutes=5), cache: PrincipalCache | None = None):
        self.trust, self.vomsdir, self.tokens, self.sessions = trust, vomsdir, tokens, sessions
        self.clock, self.skew = clock, skew
        self.cache = cache or PrincipalCache()
        self._refused = ExpiringCache()

    def certificate(self, cert: bytes) -> Principal:
        """A client certificate (PEM or DER, as TLS presented it; intermediates may follow)."""
        digest = digest_of(cert)
        now = self.clock()
        hit = self.cache.get(digest, now)
        if hit is not None:
            return hit
        generation = self.trust.generation()
        refused = self._refused.get(digest, now)
        if refused is not None and refused.trust == generation:
            raise Unauthenticated(refused.message)
        try:
            principal = self._verify_certificate(cert, digest, now)
        except Unauthenticated as exc:
            self._refused.put(digest, _Refusal(exc.message, now + REFUSAL_TTL, generation))
            raise
        self.cache.put(principal)
        return principal

    def _verify_certificate(self, cert: bytes, digest: str, now: dt.datetime) -> Principal:
        try:
            certs = load_pem_or_der(cert)
        except ValueError as exc:
            raise Unauthenticated(f"the client certificate cannot be read ({exc})") from None
        leaf = certs[0]
        if proxy_info(leaf) is not None:
            raise Unauthenticated("proxy certificates cannot be used for TLS here; log in with the proxy "
                                  "(AuthService.Login, `vws login`) and send the session token")
        if leaf.subject == leaf.issuer:
            raise Unauthenticated(f"{slash_dn(leaf.subject)} is self-signed; use a certificate from a trusted CA")
        ca, expiry = self.trust.verify_chain(leaf, certs[1:], "client certificate", now, self.skew)
        return Principal(identity=slash_dn(leaf.subject), kind=CredentialKind.CERTIFICATE, attributes=(),
                         expiry=expiry, digest=digest, issuer=slash_dn(ca.subject))

    def proxy(self, chain_der: list[bytes]) -> Principal:
        """An RFC 3820 proxy chain (DER, leaf first) with its VOMS attributes. Possession of the
        key is not proven here: `login` does that."""
        digest = digest_of(*chain_der)
        now = self.clock()
        hit = self.cache.get(digest, now)
        if hit is not None:
            return hit
        try:
            chain = [x509.load_der_x509_certificate(c) for c in chain_der]
        except ValueError as exc:
            raise Unauthenticated(f"a certificate of the proxy chain cannot be read ({exc}); send DER "
                                  "certificates, the proxy first") from None
        principal = verify_proxy_chain(chain, digest, self.trust, self.vomsdir, now, self.skew)
        self.cache.put(principal)
        return principal

    def token(self, token: str) -> Principal:
        """A WLCG bearer token (JWT)."""
        digest = digest_of(token.encode())
        now = self.clock()
        hit = self.cache.get(digest, now)
        if hit is not None:
            return hit
        if self.tokens is None:
            raise Unauthenticated("this service accepts no bearer tokens (no token issuer is configured); use a "
                                  "certificate or a proxy")
        principal = self.tokens.verify(token, digest, now)
        self.cache.put(principal)
        return principal

    def challenge(self) -> tuple[str, dt.datetime]:
        return self._sessions().challenge(self.clock())

    def login(self, challenge: str, chain_der: list[bytes], signature: bytes) -> Session:
        """Proof of possession: the challenge signed with the proxy's key. Returns a session."""
        sessions = self._sessions()
        now = self.clock()
        sessions.consume_challenge(challenge, now)
        principal = self.proxy(chain_der)
        verify_possession(x509.load_der_x509_certificate(chain_der[0]), challenge, chain_der, signature)
        return sessions.issue(principal, now)

    def session(self, token: str) -> Principal:
        now = self.clock()
        hit = self.cache.get(token, now)
        if hit is not None:
            return hit
        principal = self._sessions().open(token, now)
        self.cache.put(principal, key=token)
        return principal

    def bearer(self, token: str) -> Principal:
        """`authorization: Bearer <token>`: a vws session token or a WLCG token."""
        return self.session(token) if token.startswith(SESSION_PREFIX) else self.token(token)

    def from_call(self, metadata: Iterable[tuple[str, str | bytes]] | Mapping, peer_certificate: bytes | None
                  ) -> Principal:
        """The caller of one gRPC call: a bearer token in the metadata wins over the TLS client
        certificate (a proxy user's TLS connection may carry a host or no certificate)."""
        items = metadata.items() if isinstance(metadata, Mapping) else metadata
        for key, value in items:
            if key.lower() == AUTHORIZATION:
                value = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
                return self.bearer(token.strip())
        if peer_certificate:
            principal = self.certificate(peer_certificate)
            if principal.identity != PUBLIC_CLIENT:
                return principal
        raise Unauthenticated("no credential: connect with a client certificate, or send "
                              "'authorization: Bearer <token>' (a WLCG token, or the session from `vws login`)")

    def _sessions(self) -> SessionAuthority:
        if self.sessions is None:
            raise Unauthenticated("this service does not take logins; connect with a client certificate or a token")
        return self.sessions
