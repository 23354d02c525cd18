"""Who is calling: one Principal per verified credential, whatever its kind."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib


class CredentialKind(enum.Enum):
    CERTIFICATE = "certificate"  # an X.509 end-entity certificate (mutual TLS)
    PROXY = "proxy"              # an RFC 3820 proxy chain, usually with a VOMS attribute certificate
    TOKEN = "token"              # a WLCG bearer token (JWT)


@dataclasses.dataclass(frozen=True)
class Principal:
    identity: str                  # grid DN (/C=../O=../CN=..) or, for tokens, sub@issuer-name
    kind: CredentialKind
    attributes: tuple[str, ...]    # VOMS FQANs (proxies) or wlcg.groups (tokens); primary first
    expiry: dt.datetime            # the earliest end of any validity the credential rests on
    digest: str                    # sha256 of the credential as presented (the cache key)
    issuer: str = ""               # issuing CA's DN, or the token issuer's URL
    vo: str = ""                   # the VO of the attribute certificate, or of the first token group
    scopes: tuple[str, ...] = ()   # token scopes (WLCG `scope`)

    def to_json(self) -> dict:
        return {"identity": self.identity, "kind": self.kind.value, "attributes": list(self.attributes),
                "expiry": int(self.expiry.timestamp()), "digest": self.digest, "issuer": self.issuer,
                "vo": self.vo, "scopes": list(self.scopes)}

    @classmethod
    def from_json(cls, d: dict) -> "Principal":
        return cls(identity=d["identity"], kind=CredentialKind(d["kind"]), attributes=tuple(d["attributes"]),
                   expiry=dt.datetime.fromtimestamp(d["expiry"], dt.timezone.utc), digest=d["digest"],
                   issuer=d.get("issuer", ""), vo=d.get("vo", ""), scopes=tuple(d.get("scopes", ())))


def digest_of(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.hexdigest()
