"""The local PKI: made once, kept when valid, keys private; its certificates carry a real
mutual-TLS gRPC call, whose peer certificate becomes the caller's principal; a manager
certificate from a CSR is trusted, one from another CA is not."""
from __future__ import annotations

import datetime as dt
import stat
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vws.common.auth import Authenticator, CredentialKind, pki
from vws.common.errors import InvalidArgument, Unauthenticated


@pytest.fixture
def site(tmp_path):
    return pki.ensure(tmp_path, hosts=["vws.example.org", "10.0.0.7"])


def test_first_start_makes_the_ca_services_and_admin(site, tmp_path):
    assert site.made == ["ca", "repository", "factory", "manager", "admin", "public-client"]
    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    for kp in [site.ca, site.admin, *site.services.values()]:
        assert stat.S_IMODE(kp.key.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(site.services["repository"].cert_pem())
    names = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
    assert {"localhost", "127.0.0.1", "::1", "vws.example.org", "10.0.0.7"} <= names
    assert pki.service_role("/O=vws/OU=services/CN=factory") == "factory"
    assert pki.service_role("/O=vws/OU=managers/CN=node7") == "manager"
    assert pki.service_role("/O=vws/OU=users/CN=admin") is None


def test_a_valid_set_is_kept_and_a_broken_part_is_made_again(site, tmp_path):
    before = {p: p.read_bytes() for p in (tmp_path / "pki").iterdir()}
    again = pki.ensure(tmp_path, hosts=["vws.example.org", "10.0.0.7"])
    assert again.made == []
    assert {p: p.read_bytes() for p in (tmp_path / "pki").iterdir()} == before
    site.services["factory"].key.write_bytes(b"garbage")
    assert pki.ensure(tmp_path, hosts=["vws.example.org", "10.0.0.7"]).made == ["factory"]
    assert pki.ensure(tmp_path, hosts=["vws.example.org", "10.0.0.7", "new.example.org"]).made == \
        ["repository", "factory", "manager"]
    assert site.ca.cert.read_bytes() == before[site.ca.cert]
    near_end = dt.datetime.now(dt.timezone.utc) + pki.CA_LIFETIME - dt.timedelta(days=1)
    assert pki.ensure(tmp_path, now=near_end).made[0] == "ca"


def _serve(site):
    def whoami(request, context):
        pem = context.auth_context()["x509_pem_cert"][0]
        p = auth.certificate(pem)
        return f"{p.identity} {p.kind.value}".encode()

    auth = Authenticator(site.trust_store())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)})])
    creds = grpc.ssl_server_credentials([(site.services["repository"].key_pem(), site.services["repository"].cert_pem())],
                                        root_certificates=site.ca_pem(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def _call(site, port, cert_pem, key_pem, root=None):
    creds = grpc.ssl_channel_credentials(root or site.ca_pem(), key_pem, cert_pem)
    with grpc.secure_channel(f"localhost:{port}", creds) as channel:
        return channel.unary_unary("/test.Who/Am")(b"", timeout=10).decode()


def test_mutual_tls_with_the_admin_and_an_issued_manager_certificate(site):
    server, port = _serve(site)
    try:
        assert _call(site, port, site.admin.cert_pem(), site.admin.key_pem()) == \
            f"{pki.admin_identity()} {CredentialKind.CERTIFICATE.value}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored")]))
               .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        cert_pem, no_key = site.issue_manager("node7", ["node7.example.org"], csr_pem=csr)
        assert no_key is None
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        assert _call(site, port, cert_pem, key_pem) == "/O=vws/OU=managers/CN=node7 certificate"
    finally:
        server.stop(None)


def test_a_certificate_not_from_the_site_ca_is_refused(site, tmp_path):
    other = pki.ensure(tmp_path / "other-site")
    cert_pem, key_pem = other.issue_manager("intruder")
    with pytest.raises(Unauthenticated, match="not a trusted CA"):
        Authenticator(site.trust_store()).certificate(cert_pem)
    server, port = _serve(site)
    try:
        with pytest.raises(grpc.RpcError):  # the TLS layer itself refuses it
            _call(site, port, cert_pem, key_pem)
    finally:
        server.stop(None)


def test_a_manager_name_is_checked(site):
    with pytest.raises(InvalidArgument, match="not a manager or user name"):
        site.issue_manager("a/b")
    with pytest.raises(InvalidArgument, match="CSR cannot be read"):
        site.issue_manager("node", csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
