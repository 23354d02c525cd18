"""The site's local PKI, made on first start in `<data_dir>/pki`: a certificate authority,
certificates for the repository, factory and manager, and an administrator credential.

Kept when present and valid (readable, key matching, signed by the CA, more than RENEW_BEFORE
left, host names covered); whatever is not is made again (all of it when the CA is). Keys are
ECDSA P-256, mode 0600, the directory 0700. Managers on other hosts get certificates from
`issue_manager`, from a CSR so their key never travels."""
from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import functools
import ipaddress
import os
import pathlib
import secrets
import socket
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .certs import TrustStore, signed_by, slash_dn
from ..errors import InvalidArgument

SERVICES = ("repository", "factory", "manager")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
CA_LIFETIME = dt.timedelta(days=3650)
LEAF_LIFETIME = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
ORG = "vws"
OU_SERVICES, OU_MANAGERS, OU_USERS, OU_PUBLIC = "services", "managers", "users", "public"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert: pathlib.Path
    key: pathlib.Path

    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


@dataclasses.dataclass
class LocalPki:
    directory: pathlib.Path
    ca: KeyPair
    services: dict[str, KeyPair]
    admin: KeyPair
    made: list[str]            # what this call (re)made; empty when everything was kept
    public_client: KeyPair | None = None   # names no one: for callers with a bearer token

    def ca_pem(self) -> bytes:
        return self.ca.cert_pem()

    def trust_store(self) -> TrustStore:
        return TrustStore(anchors=[x509.load_pem_x509_certificate(self.ca_pem())])

    def issue_manager(self, name: str, hosts: Iterable[str] = (), csr_pem: bytes | None = None,
                      now: dt.datetime | None = None) -> tuple[bytes, bytes | None]:
        """A manager certificate signed by this CA: (certificate PEM, key PEM or None when a CSR
        brought the public key). Its subject is /O=vws/OU=managers/CN=<name>."""
        return self._issue(OU_MANAGERS, name, [*LOOPBACK, name, *hosts], csr_pem, now)

    def issue_user(self, name: str, csr_pem: bytes | None = None, now: dt.datetime | None = None
                   ) -> tuple[bytes, bytes | None]:
        """A user's client certificate signed by this CA, /O=vws/OU=users/CN=<name> (for sites
        without a grid CA, and for tests)."""
        return self._issue(OU_USERS, name, None, csr_pem, now)

    def _issue(self, ou: str, name: str, hosts: list[str] | None, csr_pem: bytes | None,
               now: dt.datetime | None) -> tuple[bytes, bytes | None]:
        if not name or any(c in name for c in "/=,+\n"):
            raise InvalidArgument(f"{name!r} is not a manager or user name; use letters, digits, '.', '-'", "name")
        key = None
        if csr_pem is not None:
            try:
                csr = x509.load_pem_x509_csr(csr_pem)
            except ValueError as exc:
                raise InvalidArgument(f"the CSR cannot be read ({exc}); give a PEM certificate request",
                                      "csr") from None
            if not csr.is_signature_valid:
                raise InvalidArgument("the CSR's signature does not match its key; make it again", "csr")
            public = csr.public_key()
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            public = key.public_key()
        ca_cert, ca_key = _load_pair(self.ca)
        cert = _leaf(_name(ou, name), public, ca_cert, ca_key, hosts, server=hosts is not None, now=now or _now())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()) if key else None
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def service_role(identity: str) -> str | None:
    """'repository', 'factory' or 'manager' for a DN the local CA gives services; else None."""
    if identity.startswith(f"/O={ORG}/OU={OU_SERVICES}/CN="):
        role = identity.rsplit("=", 1)[1]
        return role if role in SERVICES else None
    if identity.startswith(f"/O={ORG}/OU={OU_MANAGERS}/CN="):
        return "manager"
    return None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _name(ou: str, cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _leaf(subject: x509.Name, public, ca_cert: x509.Certificate, ca_key, hosts: list[str] | None, server: bool,
          now: dt.datetime) -> x509.Certificate:
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(public)
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(min(now + LEAF_LIFETIME, ca_cert.not_valid_after_utc))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
         .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if hosts:
        b = b.add_extension(_san(hosts), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save(pair: KeyPair, cert: x509.Certificate, key, key_mode: int = 0o600) -> None:
    _write(pair.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), key_mode)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_pair(pair: KeyPair):
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    return cert, key


def _usable(pair: KeyPair, ca: x509.Certificate | None, hosts: list[str], now: dt.datetime,
            public: bool = False) -> bool:
    """Readable, key matching, private key 0600 (unless `public`), signed by `ca` (None:
    self-signed), not about to expire, covering `hosts`."""
    try:
        cert, key = _load_pair(pair)
        if pair.key.stat().st_mode & 0o077 and not public:
            return False
    except (OSError, ValueError, TypeError):
        return False
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return False
    if cert.not_valid_after_utc - now < RENEW_BEFORE or cert.not_valid_before_utc > now + dt.timedelta(minutes=5):
        return False
    if not signed_by(cert, ca or cert):
        return False
    if hosts:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        have = {str(n.value) for n in san}
        if not all(str(ipaddress.ip_address(h)) in have if _is_ip(h) else h in have for h in hosts):
            return False
    return True


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def ensure(data_dir: str | os.PathLike, hosts: Iterable[str] = (), now: dt.datetime | None = None) -> LocalPki:
    """Makes (or keeps) the local PKI in `<data_dir>/pki`. `hosts`: extra names and addresses
    the services answer on (the machine's host name is always added)."""
    return ensure_dir(pathlib.Path(data_dir) / "pki", hosts, now)


def ensure_dir(d: str | os.PathLike, hosts: Iterable[str] = (), now: dt.datetime | None = None) -> LocalPki:
    """As `ensure`, in the PKI directory `d` itself."""
    now = now or _now()
    d = pathlib.Path(d)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    # Services of one site may start at once: one of them makes what is missing, the others
    # then find it made.
    with open(d / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure(d, hosts, now)


def _ensure(d: pathlib.Path, hosts: Iterable[str], now: dt.datetime) -> LocalPki:
    pair = lambda n: KeyPair(d / f"{n}.pem", d / f"{n}.key")  # noqa: E731
    ca_pair, admin = pair("ca"), pair("admin")
    services = {s: pair(s) for s in SERVICES}
    server_hosts = [*LOOPBACK, socket.gethostname(), *hosts]
    made: list[str] = []

    if not _usable(ca_pair, None, [], now):
        key = ec.generate_private_key(ec.SECP256R1())
        # A random part in the CA's name: two sites' CAs never share a subject (or a hash).
        subject = _name("ca", f"vws local CA {secrets.token_hex(4)}")
        ca_cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + CA_LIFETIME)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                  critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .sign(key, hashes.SHA256()))
        _save(ca_pair, ca_cert, key)
        made.append("ca")
    ca_cert, ca_key = _load_pair(ca_pair)

    for role, kp in services.items():
        if "ca" in made or not _usable(kp, ca_cert, server_hosts, now):
            key = ec.generate_private_key(ec.SECP256R1())
            ou = OU_MANAGERS if role == "manager" else OU_SERVICES
            _save(kp, _leaf(_name(ou, role), key.public_key(), ca_cert, ca_key, server_hosts, True, now), key)
            made.append(role)
    if "ca" in made or not _usable(admin, ca_cert, [], now):
        key = ec.generate_private_key(ec.SECP256R1())
        _save(admin, _leaf(_name(OU_USERS, "admin"), key.public_key(), ca_cert, ca_key, None, False, now), key)
        made.append("admin")
    # The public client credential: gRPC's Python server can only require a client certificate
    # or not ask for one, so every client presents one; a caller proving who they are with a
    # bearer token (a WLCG token, a proxy's session) presents this one, which names no one.
    public = pair("public-client")
    if "ca" in made or not _usable(public, ca_cert, [], now, public=True):
        key = ec.generate_private_key(ec.SECP256R1())
        _save(public, _leaf(_name(OU_PUBLIC, "client"), key.public_key(), ca_cert, ca_key, None, False, now), key,
              key_mode=0o644)
        made.append("public-client")
    return LocalPki(d, ca_pair, services, admin, made, public)


@functools.cache  # asked on every call a certificate makes: the name is built once
def admin_identity() -> str:
    return slash_dn(_name(OU_USERS, "admin"))


@functools.cache
def public_client_identity() -> str:
    return slash_dn(_name(OU_PUBLIC, "client"))
