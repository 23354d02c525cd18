"""X.509 groundwork shared by every credential: grid-style DNs, OpenSSL subject hashes, a
trusted CA directory in the grid layout (/etc/grid-security/certificates: `<hash>.<n>`) and
the walk from an end-entity certificate up to a trusted anchor."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import pathlib
import threading
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID, ObjectIdentifier

from ..errors import Unauthenticated

# OpenSSL's short names, as grid DNs (and .lsc files, grid-mapfiles) spell them.
_SHORT = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
    NameOID.DOMAIN_COMPONENT: "DC", NameOID.USER_ID: "UID", NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber", NameOID.STREET_ADDRESS: "street", NameOID.TITLE: "title",
    NameOID.GIVEN_NAME: "GN", NameOID.SURNAME: "SN",
}
MAX_DEPTH = 10


_SHORT_BY_DOTTED = {oid.dotted_string: short for oid, short in _SHORT.items()}


def slash_from_rdns(rdns: Iterable[Iterable[tuple[str, str]]]) -> str:
    """RDNs as (dotted OID, value) pairs -> `/C=CH/O=Test Grid/CN=Alice`."""
    parts = ["+".join(f"{_SHORT_BY_DOTTED.get(oid, oid)}={value}" for oid, value in rdn) for rdn in rdns]
    return "/" + "/".join(parts) if parts else ""


def slash_dn(name: x509.Name) -> str:
    """`/C=CH/O=Test Grid/CN=Alice`, in the certificate's own RDN order (OpenSSL's oneline form)."""
    return slash_from_rdns([(a.oid.dotted_string, a.value) for a in rdn] for rdn in name.rdns)


# --- OpenSSL's X509_NAME_hash (1.0+): SHA-1 of the canonical name, first 4 bytes little-endian.

def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _der_oid(oid: ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, bytes(body))


_SPACE = b" \t\n\v\f\r"


def _canon_value(text: str) -> bytes:
    """As OpenSSL's asn1_string_canon: trim, ASCII lower case, runs of white space become one space."""
    raw = text.encode("utf-8").strip(_SPACE)
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c < 0x80 and c in _SPACE:
            out.append(0x20)
            while i < len(raw) and raw[i] in _SPACE:
                i += 1
            continue
        out.append(c + 32 if 0x41 <= c <= 0x5A else c)
        i += 1
    return bytes(out)


def subject_hash(name: x509.Name) -> str:
    """OpenSSL's `x509 -subject_hash` of a name: the `<hash>` of `<hash>.0` in a CA directory."""
    canon = bytearray()
    for rdn in name.rdns:
        entries = sorted(_der(0x30, _der_oid(a.oid) + _der(0x0C, _canon_value(a.value))) for a in rdn)
        canon += _der(0x31, b"".join(entries))
    return f"{int.from_bytes(hashlib.sha1(bytes(canon)).digest()[:4], 'little'):08x}"


# --- validity and issuance

def check_validity(cert: x509.Certificate, what: str, now: dt.datetime, skew: dt.timedelta) -> None:
    if now + skew < cert.not_valid_before_utc:
        raise Unauthenticated(f"{what} {slash_dn(cert.subject)} is not valid before "
                              f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z; check the clocks")
    if now >= cert.not_valid_after_utc:
        raise Unauthenticated(f"{what} {slash_dn(cert.subject)} expired at "
                              f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z; renew it")


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def load_pem_or_der(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


class TrustStore:
    """Trusted CA certificates: a directory in the grid layout (looked up by the issuer's
    subject hash, as OpenSSL does; re-read when the directory changes) plus anchors given in
    code (the local CA). Only these anchor a chain; intermediates presented by a client count
    only once they chain up to one."""

    def __init__(self, ca_dir: str | os.PathLike | None = None, anchors: Iterable[x509.Certificate] = ()):
        self.ca_dir = pathlib.Path(ca_dir) if ca_dir else None
        self._anchors: dict[str, list[x509.Certificate]] = {}
        for a in anchors:
            self._anchors.setdefault(subject_hash(a.subject), []).append(a)
        self._dir_cache: dict[str, list[x509.Certificate]] = {}
        self._dir_mtime = None
        self._lock = threading.Lock()

    @property
    def anchors(self) -> list[x509.Certificate]:
        """The anchors given in code (not the directory's)."""
        return [a for group in self._anchors.values() for a in group]

    def generation(self) -> int | None:
        """Changes whenever the directory's CAs may have (its modification time); None without one."""
        if self.ca_dir is None:
            return None
        try:
            return self.ca_dir.stat().st_mtime_ns
        except OSError:
            return None

    def _from_dir(self, h: str) -> list[x509.Certificate]:
        if self.ca_dir is None:
            return []
        try:
            mtime = self.ca_dir.stat().st_mtime_ns
        except OSError:
            return []
        with self._lock:
            if mtime != self._dir_mtime:
                self._dir_cache, self._dir_mtime = {}, mtime
            if h not in self._dir_cache:
                found = []
                for n in range(100):
                    path = self.ca_dir / f"{h}.{n}"
                    if not path.exists():
                        break
                    try:
                        found += load_pem_or_der(path.read_bytes())
                    except ValueError:
                        continue  # an unreadable file is no anchor; the others still are
                self._dir_cache[h] = found
            return self._dir_cache[h]

    def issuers_of(self, cert: x509.Certificate) -> list[x509.Certificate]:
        h = subject_hash(cert.issuer)
        return [c for c in self._anchors.get(h, []) + self._from_dir(h) if c.subject == cert.issuer]

    def verify_chain(self, cert: x509.Certificate, presented: Iterable[x509.Certificate], what: str,
                     now: dt.datetime, skew: dt.timedelta = dt.timedelta(0)) -> tuple[x509.Certificate, dt.datetime]:
        """Walks from `cert` (an end entity) to a trusted self-signed anchor, through anchors
        of this store or CA certificates the client presented. Returns (the CA that issued
        `cert`, the earliest expiry along the path); raises Unauthenticated."""
        check_validity(cert, what, now, skew)
        extra = [c for c in presented if is_ca(c) and c.subject != c.issuer]  # a root counts only if trusted
        expiry = cert.not_valid_after_utc
        current, first_issuer = cert, None
        for _ in range(MAX_DEPTH):
            trusted = [c for c in self.issuers_of(current) if signed_by(current, c)]
            if trusted:
                anchor = trusted[0]
                check_validity(anchor, "trusted CA", now, skew)
                expiry = min(expiry, anchor.not_valid_after_utc)
                first_issuer = first_issuer or anchor
                if anchor.subject == anchor.issuer:
                    return first_issuer, expiry
                current = anchor
                continue
            step = next((c for c in extra if c.subject == current.issuer and signed_by(current, c)), None)
            if step is None:
                raise Unauthenticated(
                    f"{what} {slash_dn(cert.subject)} was issued by {slash_dn(current.issuer)}, which is not a "
                    f"trusted CA here; use a credential from a trusted CA, or have the site add that CA to "
                    f"{self.ca_dir or 'its trusted CAs'}")
            check_validity(step, "CA certificate", now, skew)
            expiry = min(expiry, step.not_valid_after_utc)
            first_issuer = first_issuer or step
            current = step
        raise Unauthenticated(f"{what} {slash_dn(cert.subject)}: the chain to a trusted CA is longer than "
                              f"{MAX_DEPTH} certificates")
