"""How a service is protected, from its settings: its TLS identity, the roots it checks client
certificates against (the site's CA and the grid CAs), and its gate. Its own outgoing calls
present its certificate from then on."""
from __future__ import annotations

import dataclasses
from typing import Callable

from cryptography import x509

from .. import clients, tls
from .certs import TrustStore
from .credentials import Authenticator
from .gate import Authorizer, Gate


@dataclasses.dataclass
class Protection:
    identity: tls.Identity | None     # None: plain text, no gate (explicitly insecure, loopback)
    client_roots: bytes = b""
    gate: Gate | None = None
    local_ca: TrustStore | None = None

    def server_arguments(self) -> dict:
        return {"identity": self.identity, "client_roots": self.client_roots, "gate": self.gate}


def protect(settings, role: str, service_name: str, authorizer: Callable[[TrustStore], Authorizer]) -> Protection:
    """`role`: which certificate of the local PKI it uses (repository, factory, manager);
    `service_name`: how audit entries name it; `authorizer`: given the site's CA, where user
    calls are decided."""
    identity = tls.service_identity(settings, role)
    clients.use(identity)
    if identity is None:
        return Protection(None)
    local_ca = TrustStore(anchors=x509.load_pem_x509_certificates(identity.ca_pem))
    roots = identity.ca_pem + b"\n" + tls.grid_roots(settings.grid_certificates)
    gate = Gate(service_name, Authenticator(local_ca), authorizer(local_ca))
    return Protection(identity, roots, gate, local_ca)
