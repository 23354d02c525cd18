"""RFC 3820 proxy chains: proxy rules from the leaf down to the end-entity certificate (EEC),
the EEC's chain to a trusted CA, and the VOMS attribute certificates the proxies carry."""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from asn1crypto import core
from cryptography import x509
from cryptography.x509.oid import NameOID

from .certs import TrustStore, check_validity, signed_by, slash_dn
from .principal import CredentialKind, Principal
from .voms import VomsDir, parse_acs
from ..errors import Unauthenticated

OID_PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"   # Globus limited proxy: the issuer's rights, minus job submission
_INDEPENDENT = "1.3.6.1.5.5.7.21.2"     # carries none of the issuer's rights: no identity to take


class _ProxyPolicy(core.Sequence):
    _fields = [("policy_language", core.ObjectIdentifier), ("policy", core.OctetString, {"optional": True})]


class _ProxyCertInfo(core.Sequence):
    _fields = [("path_len", core.Integer, {"optional": True}), ("proxy_policy", _ProxyPolicy)]


def proxy_info(cert: x509.Certificate) -> tuple[int | None, str] | None:
    """(path length constraint, policy language OID) of an RFC 3820 proxy; None for a non-proxy."""
    try:
        raw = cert.extensions.get_extension_for_oid(OID_PROXY_CERT_INFO).value.value
    except x509.ExtensionNotFound:
        return None
    try:
        info = _ProxyCertInfo.load(raw)
        return info["path_len"].native, info["proxy_policy"]["policy_language"].dotted
    except (ValueError, TypeError, KeyError) as exc:
        raise Unauthenticated(f"the proxy's proxyCertInfo extension cannot be read ({exc}); make the proxy "
                              "again") from None


def _check_proxy(proxy: x509.Certificate, issuer: x509.Certificate, below: int, now: dt.datetime,
                 skew: dt.timedelta) -> None:
    """One proxy against the certificate that signed it; `below` proxies were made from it."""
    path_len, language = proxy_info(proxy)
    who = slash_dn(proxy.subject)
    if language not in (_INHERIT_ALL, _LIMITED):
        raise Unauthenticated(f"proxy {who} has policy language {language}, which grants no identity here; "
                              "make an ordinary (inherit-all) proxy, e.g. voms-proxy-init --rfc")
    if path_len is not None and below > path_len:
        raise Unauthenticated(f"proxy {who} allows {path_len} proxies below it but has {below}")
    # RFC 3820 3.4: the proxy's subject is its issuer's subject plus one CN.
    last = proxy.subject.rdns[-1] if proxy.subject.rdns else None
    if (proxy.issuer != issuer.subject or last is None or len(last) != 1
            or next(iter(last)).oid != NameOID.COMMON_NAME
            or x509.Name(proxy.subject.rdns[:-1]) != issuer.subject):
        raise Unauthenticated(f"proxy {who} is not named after its issuer {slash_dn(issuer.subject)} plus one CN "
                              "(RFC 3820); it is not a proxy of that certificate")
    if not signed_by(proxy, issuer):
        raise Unauthenticated(f"proxy {who} does not carry a valid signature of {slash_dn(issuer.subject)}")
    check_validity(proxy, "proxy", now, skew)
    for ext_class in (x509.SubjectAlternativeName, x509.IssuerAlternativeName):
        try:
            proxy.extensions.get_extension_for_class(ext_class)
            raise Unauthenticated(f"proxy {who} carries a {ext_class.__name__}, which RFC 3820 forbids")
        except x509.ExtensionNotFound:
            pass
    try:
        if proxy.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise Unauthenticated(f"proxy {who} claims to be a CA; a proxy cannot be one")
    except x509.ExtensionNotFound:
        pass
    try:
        if proxy.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            raise Unauthenticated(f"proxy {who} asserts keyCertSign in its key usage, which RFC 3820 forbids")
    except x509.ExtensionNotFound:
        pass
    try:
        if not issuer.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            raise Unauthenticated(f"{slash_dn(issuer.subject)} may not sign proxies: its key usage lacks "
                                  "digitalSignature")
    except x509.ExtensionNotFound:
        pass


def verify_proxy_chain(chain: Sequence[x509.Certificate], digest: str, trust: TrustStore,
                       vomsdir: VomsDir | None, now: dt.datetime,
                       skew: dt.timedelta = dt.timedelta(minutes=5)) -> Principal:
    """`chain` leaf first, as a proxy file holds it (proxy, [proxies...], EEC, [CAs...]).
    Returns the EEC's principal with the FQANs of every attribute certificate as attributes."""
    if not chain or proxy_info(chain[0]) is None:
        raise Unauthenticated("the credential is not a proxy certificate (no proxyCertInfo extension); "
                              "present an RFC 3820 proxy, e.g. from voms-proxy-init --rfc")
    n = 0
    while n < len(chain) and proxy_info(chain[n]) is not None:
        n += 1
    if n == len(chain):
        raise Unauthenticated("the proxy chain ends without the end-entity certificate it was made from; "
                              "send the whole proxy file")
    eec = chain[n]
    for i in range(n):
        _check_proxy(chain[i], chain[i + 1], i, now, skew)
    if proxy_info(eec) is None and eec.subject == eec.issuer:
        raise Unauthenticated(f"{slash_dn(eec.subject)} is self-signed; use a certificate from a trusted CA")
    ca, expiry = trust.verify_chain(eec, chain[n + 1:], "certificate", now, skew)
    for p in chain[:n]:
        expiry = min(expiry, p.not_valid_after_utc)
    fqans: list[str] = []
    vo = ""
    for p in chain[:n]:
        acs = parse_acs(p)
        if acs and vomsdir is None:
            raise Unauthenticated("this service has no VOMS servers configured (no vomsdir); present a proxy "
                                  "without VOMS attributes or ask the site to configure its vomsdir")
        for ac in acs:
            vomsdir.verify(ac, eec, now, skew)
            vo = vo or ac.vo
            fqans += [f for f in ac.fqans if f not in fqans]
            expiry = min(expiry, ac.not_after)
    return Principal(identity=slash_dn(eec.subject), kind=CredentialKind.PROXY, attributes=tuple(fqans),
                     expiry=expiry, digest=digest, issuer=slash_dn(ca.subject), vo=vo)
