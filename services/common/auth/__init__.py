"""Credentials and sessions: who calls (Principal), proven how (certificate, proxy with VOMS
attributes through a login, WLCG token). What they may do is the site's policy, which the
repository holds (vws.repository.policy)."""
from .certs import TrustStore, slash_dn, subject_hash
from .credentials import AUTHORIZATION, Authenticator, PrincipalCache
from .principal import CredentialKind, Principal
from .session import ProxyFile, Session, SessionAuthority, load_or_create_key
from .tokens import TokenIssuer, TokenVerifier
from .voms import VomsDir

__all__ = ["AUTHORIZATION", "Authenticator", "CredentialKind", "Principal", "PrincipalCache", "ProxyFile", "Session",
           "SessionAuthority", "TokenIssuer", "TokenVerifier", "TrustStore", "VomsDir", "load_or_create_key",
           "slash_dn", "subject_hash"]
