"""Real grid credentials made at run time in a temporary directory: CAs in the grid layout
(`<subject hash>.0`, hashes from `openssl x509 -subject_hash`), user and VOMS host
certificates with the extensions voms-proxy-fake needs, a vomsdir of `.lsc` files, proxies
from Debian's voms-proxy-fake, and WLCG tokens from a local issuer (a JWKS file)."""
from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import shutil
import subprocess
import time
import uuid

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from vws.common.auth.certs import slash_dn

VOMS_PROXY_FAKE = shutil.which("voms-proxy-fake")
OPENSSL = shutil.which("openssl")
MISSING_TOOLS = [t for t, p in (("voms-proxy-fake (voms-clients)", VOMS_PROXY_FAKE), ("openssl", OPENSSL)) if not p]
WHY = f"{', '.join(MISSING_TOOLS)} missing: run make setup (scripts/setup-system.sh installs them)"
KEY_BITS = 2048
PRODUCTION = "/atlas/Role=production"
# The rule that grants the production role; a test adds what else it needs after it.
PRODUCTION_RULE = """
[[rule]]
name = "atlas-production"
match.fqan = ["/atlas/Role=production"]
kinds = ["account", "sandbox", "vm"]
limits = { memory = "8G", lifetime = "2d" }
customise = { unix_group = "atlasprd", environment = { VO = "{vo}" } }
"""


def _name(*cns: str, org: str = "Test Grid") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      *(x509.NameAttribute(NameOID.COMMON_NAME, c) for c in cns)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Identity:
    """A certificate, its key and where both are written."""

    def __init__(self, cert: x509.Certificate, key, cert_path: pathlib.Path, key_path: pathlib.Path):
        self.cert, self.key, self.cert_path, self.key_path = cert, key, cert_path, key_path

    @property
    def dn(self) -> str:
        return slash_dn(self.cert.subject)


class CA:
    def __init__(self, root: pathlib.Path, name: str, org: str = "Test Grid"):
        self.root = root
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        now = dt.datetime.now(dt.timezone.utc)
        subject = _name(name, org=org)
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                    critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                     .sign(self.key, hashes.SHA256()))

    @property
    def dn(self) -> str:
        return slash_dn(self.cert.subject)

    def issue(self, subject: x509.Name, path: pathlib.Path, days_valid: float = 30,
              days_before: float = 1) -> Identity:
        """An end-entity certificate with subjectKeyIdentifier=hash and
        authorityKeyIdentifier=keyid,issuer (voms-proxy-fake needs both)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        now = dt.datetime.now(dt.timezone.utc)
        aki = x509.AuthorityKeyIdentifier(
            key_identifier=x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()).digest,
            authority_cert_issuer=[x509.DirectoryName(self.cert.subject)],
            authority_cert_serial_number=self.cert.serial_number)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=days_before))
                .not_valid_after(now + dt.timedelta(days=days_valid))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                               critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(aki, critical=False)
                .sign(self.key, hashes.SHA256()))
        path.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = path / "cert.pem", path / "key.pem"
        cert_path.write_bytes(_pem(cert))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
        key_path.chmod(0o400)
        return Identity(cert, key, cert_path, key_path)


def openssl_subject_hash(cert_path: pathlib.Path) -> str:
    return subprocess.run([OPENSSL, "x509", "-noout", "-subject_hash", "-in", str(cert_path)], check=True,
                          capture_output=True, text=True).stdout.strip()


class GridWorld:
    """A trusted CA in a grid CA directory, an untrusted one, users, VOMS servers and a vomsdir."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.ca_dir = root / "certificates"
        self.vomsdir = root / "vomsdir"
        self.ca_dir.mkdir(parents=True)
        self.vomsdir.mkdir()
        (root / ".rnd").write_bytes(os.urandom(1024))  # voms-proxy-fake's OpenSSL wants a seed file
        self.ca = CA(root, "Test Grid CA")
        self.rogue_ca = CA(root, "Rogue CA", org="Elsewhere")
        self.trust(self.ca)
        self._n = 0

    def trust(self, ca: CA) -> pathlib.Path:
        """Adds a CA to the directory under its OpenSSL subject hash (asked of openssl itself)."""
        tmp = self.root / f"ca-{uuid.uuid4().hex}.pem"
        tmp.write_bytes(_pem(ca.cert))
        h = openssl_subject_hash(tmp)
        path = self.ca_dir / f"{h}.0"
        tmp.rename(path)
        return path

    def user(self, cn: str = "Alice User", ca: CA | None = None, **validity) -> Identity:
        self._n += 1
        return (ca or self.ca).issue(_name(cn), self.root / f"user{self._n}", **validity)

    def voms_server(self, host: str, vo: str, ca: CA | None = None, configure: bool = True) -> Identity:
        """A VOMS host certificate; `configure` writes vomsdir/<vo>/<host>.lsc for it."""
        self._n += 1
        ident = (ca or self.ca).issue(_name(host), self.root / f"voms{self._n}")
        if configure:
            (self.vomsdir / vo).mkdir(exist_ok=True)
            (self.vomsdir / vo / f"{host}.lsc").write_text(f"{ident.dn}\n{slash_dn(ident.cert.issuer)}\n")
        return ident

    def proxy(self, user: Identity, voms: Identity | None = None, vo: str = "atlas", fqans: tuple[str, ...] = (),
              hours: int = 12, past_proxy: str | None = None, voms_hours: int | None = None,
              past_ac: str | None = None, name: str | None = None) -> pathlib.Path:
        """A proxy from voms-proxy-fake (RFC 3820), with an AC of `fqans` signed by `voms`."""
        self._n += 1
        out = self.root / (name or f"proxy{self._n}.pem")
        argv = [VOMS_PROXY_FAKE, "-q", "-rfc", "-cert", str(user.cert_path), "-key", str(user.key_path),
                "-certdir", str(self.ca_dir), "-out", str(out), "-hours", str(hours), "-bits", str(KEY_BITS)]
        if voms is not None:
            argv += ["-voms", vo, "-hostcert", str(voms.cert_path), "-hostkey", str(voms.key_path),
                     "-uri", f"{slash_dn(voms.cert.subject).rsplit('=', 1)[1]}:15000"]
            for f in fqans:
                argv += ["-fqan", f]
            if voms_hours is not None:
                argv += ["-vomslife", str(voms_hours)]
            if past_ac:
                argv += ["-pastac", past_ac]
        if past_proxy:
            argv += ["-pastproxy", past_proxy]
        env = dict(os.environ, HOME=str(self.root), RANDFILE=str(self.root / ".rnd"))
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"voms-proxy-fake failed ({proc.returncode}): {' '.join(argv)}\n"
                               f"{proc.stdout}{proc.stderr}")
        return out


def chain_der(proxy_path: pathlib.Path) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER)
            for c in x509.load_pem_x509_certificates(proxy_path.read_bytes())]


def resign_proxy(proxy_path: pathlib.Path, signer_key, out: pathlib.Path, replace: tuple[bytes, bytes]) -> pathlib.Path:
    """The proxy with bytes of its extensions replaced (same length), signed again by its
    issuer's key: the proxy stays valid, only what it carries changed."""
    certs = x509.load_pem_x509_certificates(proxy_path.read_bytes())
    proxy = certs[0]
    old, new = replace
    assert len(old) == len(new)
    b = (x509.CertificateBuilder().subject_name(proxy.subject).issuer_name(proxy.issuer)
         .public_key(proxy.public_key()).serial_number(proxy.serial_number)
         .not_valid_before(proxy.not_valid_before_utc).not_valid_after(proxy.not_valid_after_utc))
    found = False
    for ext in proxy.extensions:
        if isinstance(ext.value, x509.UnrecognizedExtension):
            raw = ext.value.value
            if old in raw:
                raw, found = raw.replace(old, new), True
            b = b.add_extension(x509.UnrecognizedExtension(ext.oid, raw), critical=ext.critical)
        else:
            b = b.add_extension(ext.value, critical=ext.critical)
    assert found, f"{old!r} not in the proxy's extensions"
    cert = b.sign(signer_key, hashes.SHA256())
    text = proxy_path.read_bytes()
    key_start = text.index(b"-----BEGIN", text.index(b"-----END CERTIFICATE-----"))
    out.write_bytes(_pem(cert) + text[key_start:])
    return out


class TokenIssuerWorld:
    """A local WLCG token issuer: an RSA key, its JWKS file, and tokens on demand."""

    def __init__(self, root: pathlib.Path, issuer: str = "https://tokens.example.org/", kid: str = "key-1"):
        self.issuer, self.kid = issuer, kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, alg="RS256", use="sig")
        self.jwks = root / f"jwks-{uuid.uuid4().hex[:8]}.json"
        self.jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(self, sub: str = "alice-1234", groups: tuple[str, ...] = ("/atlas", "/atlas/production"),
              aud: str = "https://vws.example.org", lifetime: float = 3600, issued_ago: float = 0,
              issuer: str | None = None, scope: str = "compute.create compute.read", without: tuple[str, ...] = (),
              **extra) -> str:
        now = time.time() - issued_ago
        claims = {"wlcg.ver": "1.0", "sub": sub, "iss": issuer or self.issuer, "aud": aud, "iat": int(now),
                  "nbf": int(now), "exp": int(now + lifetime), "jti": uuid.uuid4().hex, "scope": scope,
                  "wlcg.groups": list(groups), **extra}
        for claim in without:
            del claims[claim]
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
