"""Credentials, sessions and policy: who calls (Principal), proven how (certificate, proxy with
VOMS attributes through a login, WLCG token), and what they may do (Policy)."""
from .certs import TrustStore, slash_dn, subject_hash
from .credentials import AUTHORIZATION, Authenticator, PrincipalCache
from .policy import (Customisation, Decision, GroupUsage, Limits, Policy, PolicyFile, Quota, Reason,
                                    WorkspaceRequest)
from .principal import CredentialKind, Principal
from .session import ProxyFile, Session, SessionAuthority, load_or_create_key
from .tokens import TokenIssuer, TokenVerifier
from .voms import VomsDir

__all__ = ["AUTHORIZATION", "Authenticator", "CredentialKind", "Customisation", "Decision", "GroupUsage", "Limits",
           "Policy", "PolicyFile", "Principal", "PrincipalCache", "ProxyFile", "Quota", "Reason", "Session",
           "SessionAuthority", "TokenIssuer", "TokenVerifier", "TrustStore", "VomsDir", "WorkspaceRequest",
           "load_or_create_key", "slash_dn", "subject_hash"]
