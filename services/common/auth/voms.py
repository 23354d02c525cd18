"""VOMS attribute certificates (RFC 5755 ACs as VOMS issues them) inside a proxy: parsed with
asn1crypto, checked against the configured VOMS servers of a vomsdir in the `.lsc` layout
(`vomsdir/<vo>/<host>.lsc`: the VOMS host certificate's subject DN, then its issuer DN)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import pathlib
import threading

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .certs import TrustStore, slash_dn, slash_from_rdns
from ..errors import Unauthenticated

OID_AC_SEQ = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")  # proxy extension holding the ACs
OID_FQANS = "1.3.6.1.4.1.8005.100.100.4"                          # AC attribute: the FQANs
OID_AC_CERTS = "1.3.6.1.4.1.8005.100.100.10"                      # AC extension: the signer's certificates
_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
# Parts of an FQAN that say nothing (the old long form): dropped so that patterns meet one spelling.
_NULLS = ("/Role=NULL", "/Capability=NULL")


class _ACs(core.SequenceOf):
    _child_spec = cms.AttributeCertificateV2


class _ACSeq(core.SequenceOf):  # the proxy extension: SEQUENCE OF SEQUENCE OF AttributeCertificate
    _child_spec = _ACs


class _Certs(core.SequenceOf):
    _child_spec = asn1_x509.Certificate


class _CertSeq(core.SequenceOf):  # the AC extension: SEQUENCE OF SEQUENCE OF Certificate
    _child_spec = _Certs


def normalise_fqan(fqan: str) -> str:
    for null in _NULLS:
        fqan = fqan.replace(null, "")
    return fqan


@dataclasses.dataclass
class AttributeCertificate:
    vo: str
    fqans: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    issuer_dn: str
    holder_issuer_dn: str
    holder_serial: int
    signers: list[x509.Certificate]     # the certificates the AC carries (VOMS host first)
    tbs: bytes                          # the signed part, as received
    signature: bytes
    hash_name: str


def parse_acs(proxy: x509.Certificate) -> list[AttributeCertificate]:
    """The ACs a proxy carries (none: an empty list). Raises Unauthenticated on a malformed one."""
    try:
        raw = proxy.extensions.get_extension_for_oid(OID_AC_SEQ).value.value
    except x509.ExtensionNotFound:
        return []
    try:
        return [_parse_ac(ac) for seq in _ACSeq.load(raw) for ac in seq]
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise Unauthenticated(f"the proxy's VOMS attribute certificate cannot be read ({exc}); make the proxy "
                              "again with voms-proxy-init") from None


def _slash(asn1_name) -> str:
    return slash_from_rdns([(atv["type"].dotted, str(atv["value"].native)) for atv in rdn]
                           for rdn in asn1_name.chosen)


def _general_dn(general_names) -> str:
    for gn in general_names:
        if gn.name == "directory_name":
            return _slash(gn.chosen)
    return ""


def _parse_ac(ac: cms.AttributeCertificateV2) -> AttributeCertificate:
    info = ac["ac_info"]
    base = info["holder"]["base_certificate_id"]
    issuer = info["issuer"]
    issuer_names = issuer.chosen["issuer_name"] if issuer.name == "v2_form" else issuer.chosen
    vo, fqans = "", []
    for attr in info["attributes"]:
        if attr["type"].dotted != OID_FQANS:
            continue
        for value in attr["values"]:
            syntax = cms.IetfAttrSyntax.load(value.dump())
            authority = syntax["policy_authority"]
            if authority.native and not vo:
                vo = str(authority[0].native).split("://", 1)[0]
            fqans += [normalise_fqan(v.native.decode() if isinstance(v.native, bytes) else str(v.native))
                      for v in syntax["values"]]
    signers: list[x509.Certificate] = []
    for ext in info["extensions"]:
        if ext["extn_id"].dotted == OID_AC_CERTS:
            for seq in _CertSeq.load(ext["extn_value"].contents):
                signers += [x509.load_der_x509_certificate(c.dump()) for c in seq]
    if not vo and fqans:
        vo = fqans[0].strip("/").split("/", 1)[0]
    period = info["att_cert_validity_period"]
    return AttributeCertificate(
        vo=vo, fqans=tuple(fqans),
        not_before=period["not_before_time"].native, not_after=period["not_after_time"].native,
        issuer_dn=_general_dn(issuer_names),
        holder_issuer_dn=_general_dn(base["issuer"]) if base.native else "",
        holder_serial=base["serial"].native if base.native else -1,
        signers=signers, tbs=info.dump(), signature=ac["signature"].native,
        hash_name=ac["signature_algorithm"].hash_algo)


def _signature_ok(cert: x509.Certificate, ac: AttributeCertificate) -> bool:
    algo = _HASHES.get(ac.hash_name)
    if algo is None:
        return False
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(ac.signature, ac.tbs, padding.PKCS1v15(), algo())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(ac.signature, ac.tbs, ec.ECDSA(algo()))
        else:
            return False
        return True
    except InvalidSignature:
        return False


class VomsDir:
    """The VOMS servers this site trusts: `<vomsdir>/<vo>/*.lsc`, re-read when a VO's
    directory changes. Each .lsc lists the DN chain of one VOMS host certificate."""

    def __init__(self, path: str | os.PathLike, trust: TrustStore):
        self.path = pathlib.Path(path)
        self.trust = trust
        self._cache: dict[str, tuple[int, list[list[str]]]] = {}
        self._lock = threading.Lock()

    def chains(self, vo: str) -> list[list[str]]:
        d = self.path / vo
        try:
            mtime = d.stat().st_mtime_ns
        except OSError:
            return []
        with self._lock:
            hit = self._cache.get(vo)
            if hit and hit[0] == mtime:
                return hit[1]
            chains = []
            for lsc in sorted(d.glob("*.lsc")):
                for block in lsc.read_text(errors="replace").split("------ NEXT CHAIN ------"):
                    lines = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
                    if len(lines) >= 2:
                        chains.append(lines)
            self._cache[vo] = (mtime, chains)
            return chains

    def verify(self, ac: AttributeCertificate, eec: x509.Certificate, now: dt.datetime,
               skew: dt.timedelta) -> None:
        """Signature by a configured VOMS server whose certificate chains to a trusted CA,
        holder = this end-entity certificate, validity. Raises Unauthenticated."""
        if not (ac.vo and "/" not in ac.vo and not ac.vo.startswith(".")):
            raise Unauthenticated(f"the attribute certificate names no usable VO ({ac.vo!r}); make the proxy again")
        chains = self.chains(ac.vo)
        if not chains:
            raise Unauthenticated(f"VO {ac.vo} is not configured at this site (no {self.path / ac.vo}/*.lsc); "
                                  f"ask the site to add its VOMS servers, or use a proxy of another VO")
        signer = next((c for c in ac.signers
                       if [slash_dn(c.subject), slash_dn(c.issuer)] in [ch[:2] for ch in chains]), None)
        if signer is None:
            raise Unauthenticated(
                f"the attribute certificate of VO {ac.vo} was issued by VOMS server {ac.issuer_dn or '(unnamed)'}, "
                f"which is not one of the VO's servers configured in {self.path / ac.vo}; use a proxy from a "
                "configured VOMS server, or have the site add a .lsc for it")
        if ac.issuer_dn and ac.issuer_dn != slash_dn(signer.subject):
            raise Unauthenticated(f"the attribute certificate names issuer {ac.issuer_dn} but carries the "
                                  f"certificate of {slash_dn(signer.subject)}; make the proxy again")
        self.trust.verify_chain(signer, ac.signers[1:], "VOMS server certificate", now, skew)
        if not _signature_ok(signer, ac):
            raise Unauthenticated(f"the attribute certificate of VO {ac.vo} does not carry a valid signature of "
                                  f"{slash_dn(signer.subject)} (it was altered); make the proxy again")
        # VOMS writes the holder's subject where RFC 5755 wants its issuer; VOMS itself accepts both.
        if ac.holder_serial != eec.serial_number or ac.holder_issuer_dn not in (slash_dn(eec.issuer),
                                                                                 slash_dn(eec.subject)):
            raise Unauthenticated(f"the attribute certificate of VO {ac.vo} belongs to another certificate "
                                  f"(serial {ac.holder_serial}), not to {slash_dn(eec.subject)}; make the proxy "
                                  "from your own certificate")
        if now + skew < ac.not_before:
            raise Unauthenticated(f"the attribute certificate of VO {ac.vo} is not valid before "
                                  f"{ac.not_before:%Y-%m-%d %H:%M:%S}Z; check the clocks")
        if now >= ac.not_after:
            raise Unauthenticated(f"the attribute certificate of VO {ac.vo} expired at "
                                  f"{ac.not_after:%Y-%m-%d %H:%M:%S}Z; make a new proxy with voms-proxy-init")
