"""Transport security: what a service presents (its certificate), whom it trusts (the local
CA for services; the local CA and the grid CAs for clients), and the one rule for plain text:
only when asked for, and then only on loopback."""
from __future__ import annotations

import dataclasses
import ipaddress
import pathlib

import grpc
from cryptography import x509

from . import errors

LOOPBACK_NAMES = ("localhost",)


@dataclasses.dataclass(frozen=True)
class Identity:
    """A process's TLS material: the CA bundle it trusts for vws services, and optionally its
    own certificate chain and key (a client without them proves itself with a bearer token)."""
    ca_pem: bytes
    cert_pem: bytes | None = None
    key_pem: bytes | None = None


def is_loopback(address: str) -> bool:
    """host:port (or [v6]:port, or unix:...) on this machine only."""
    if address.startswith("unix:"):
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(address: str, field: str = "insecure") -> None:
    if not is_loopback(address):
        raise errors.InvalidArgument(
            f"plain text (no TLS) is allowed only on loopback, and {address} is not; serve with TLS (drop "
            "--insecure) or listen on 127.0.0.1", field)


def _read(path: pathlib.Path, what: str, field: str, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise errors.InvalidArgument(f"{what} {path} does not exist; {fix}", field) from None
    except PermissionError:
        raise errors.InvalidArgument(f"{what} {path} cannot be read by this user; {fix}", field) from None


def pki_dir(settings) -> pathlib.Path:
    return pathlib.Path(settings.pki_dir or pathlib.Path(settings.data_dir) / "pki")


def service_identity(settings, role: str) -> Identity | None:
    """The service's own TLS identity from its settings; None when it runs in plain text. With
    the default paths the local PKI is made (or renewed) first, so a first start needs nothing."""
    if settings.insecure:
        return None
    d = pki_dir(settings)
    if not (settings.certificate and settings.private_key and settings.ca):
        from .auth import pki  # cryptography work only when it is needed
        pki.ensure_dir(d)
    fix = "give --certificate, --private-key and --ca, or leave them empty to use the local PKI"
    return Identity(ca_pem=_read(pathlib.Path(settings.ca or d / "ca.pem"), "the CA certificate", "ca", fix),
                    cert_pem=_read(pathlib.Path(settings.certificate or d / f"{role}.pem"), "the TLS certificate",
                                   "certificate", fix),
                    key_pem=_read(pathlib.Path(settings.private_key or d / f"{role}.key"), "the TLS private key",
                                  "private_key", fix))


def grid_roots(directory: pathlib.Path | None) -> bytes:
    """The CA certificates of a grid CA directory (`<hash>.<n>` files), as one PEM bundle."""
    if directory is None or not pathlib.Path(directory).is_dir():
        return b""
    out = []
    for path in sorted(pathlib.Path(directory).iterdir()):
        name = path.name
        if len(name) >= 10 and name[8] == "." and name[9:].isdigit():
            try:
                data = path.read_bytes()
                x509.load_pem_x509_certificates(data)
            except (OSError, ValueError):
                continue
            out.append(data if data.endswith(b"\n") else data + b"\n")
    return b"".join(out)


def server_credentials(identity: Identity, client_roots: bytes) -> grpc.ServerCredentials:
    """TLS with the service's certificate; every client presents a certificate chaining to
    `client_roots`. (gRPC's Python server cannot ask for a certificate without requiring one:
    callers proving who they are with a bearer token present the site's public client
    certificate, which names no one; see vws.common.auth.pki.)"""
    return grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)], root_certificates=client_roots,
                                       require_client_auth=True)


def channel_credentials(identity: Identity) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=identity.ca_pem, private_key=identity.key_pem,
                                        certificate_chain=identity.cert_pem)


def peer_certificate(context: grpc.ServicerContext) -> bytes | None:
    """The client's certificate (PEM) as TLS verified it, or None."""
    try:
        values = context.auth_context().get("x509_pem_cert")
    except Exception:  # noqa: BLE001 - no auth context on a plain-text call
        return None
    return values[0] if values else None
