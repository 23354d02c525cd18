"""The repository's side of security, from its settings: the credentials it accepts (the grid
CA directory and the site's CA, the VOMS servers, the WLCG token issuers, proxy logins), the
policy file."""
from __future__ import annotations

import json
import logging
import pathlib
import tomllib

from ..common import errors, kinds
from ..common.auth import pki
from ..common.auth.certs import TrustStore, slash_dn
from ..common.auth.credentials import Authenticator
from .policy import PolicyFile
from ..common.auth.session import SessionAuthority, load_or_create_key
from ..common.auth.tokens import TokenIssuer, TokenVerifier
from ..common.auth.voms import VomsDir
from ..common.config import RepositorySettings

log = logging.getLogger("vws.repository.security")

DEFAULT_POLICY = f"""\
# Who may create what at this site, reloaded when it changes. Rules are tried in order and the
# first that matches decides; a caller no rule matches may create nothing. docs/policy.md (in
# the vws source) has every key. Made by the first start of the repository.

[[rule]]
name = "administrator"
match.identity = ["{pki.admin_identity()}"]
kinds = {json.dumps(list(kinds.POLICY_NAMES))}
"""


def policy_file(settings: RepositorySettings) -> PolicyFile:
    path = pathlib.Path(settings.policy or pathlib.Path(settings.data_dir) / "policy.toml")
    if not settings.policy and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_POLICY)
        log.info("made %s: only the administrator may create workspaces until it says more", path)
    if not path.exists():
        raise errors.InvalidArgument(f"the policy file {path} does not exist; fix --policy", "policy")
    return PolicyFile(path)


def token_verifier(settings: RepositorySettings) -> TokenVerifier | None:
    """[[issuer]] tables: name, iss, jwks (a local file), audiences."""
    path = pathlib.Path(settings.token_issuers or pathlib.Path(settings.data_dir) / "token-issuers.toml")
    if not path.exists():
        if settings.token_issuers:
            raise errors.InvalidArgument(f"{path} does not exist; fix --token-issuers", "token_issuers")
        return None
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise errors.InvalidArgument(f"{path} is not valid TOML: {exc}", "token_issuers") from None
    issuers = []
    for i, raw in enumerate(doc.get("issuer", [])):
        missing = [k for k in ("name", "iss", "jwks") if not raw.get(k)]
        if missing:
            raise errors.InvalidArgument(f"{path}: issuer[{i}] lacks {', '.join(missing)}; give name, iss, jwks "
                                         "and audiences", "token_issuers")
        jwks = pathlib.Path(raw["jwks"])
        issuers.append(TokenIssuer(raw["name"], raw["iss"], jwks if jwks.is_absolute() else path.parent / jwks,
                                   tuple(raw.get("audiences", ())), bool(raw.get("accept_any_audience", True))))
    return TokenVerifier(issuers) if issuers else None


def authenticator(settings: RepositorySettings, local_ca: TrustStore) -> Authenticator:
    grid = settings.grid_certificates if settings.grid_certificates and settings.grid_certificates.is_dir() else None
    trust = TrustStore(grid, anchors=local_ca.anchors)
    vomsdir = VomsDir(settings.vomsdir, trust) if settings.vomsdir and settings.vomsdir.is_dir() else None
    key = load_or_create_key(pathlib.Path(settings.data_dir) / "session.key")
    # The audience ties challenges and sessions to this site: its CA's name is unique to it.
    audience = "vws:" + slash_dn(local_ca.anchors[0].subject) if local_ca.anchors else "vws"
    return Authenticator(trust, vomsdir, token_verifier(settings),
                         SessionAuthority(key, audience, session_ttl=settings.session_lifetime))


def administrators(settings: RepositorySettings) -> set[str]:
    return {pki.admin_identity(), *(a.strip() for a in settings.administrators.split(",") if a.strip())}

