"""Which credential the CLI calls with, found without being told:

1. flags: --token, --proxy, --cert/--key;
2. the environment: BEARER_TOKEN, BEARER_TOKEN_FILE (WLCG token discovery), X509_USER_PROXY,
   X509_USER_CERT/X509_USER_KEY;
3. the administrator credential of the stack `vws up` made (DATA_DIR/pki/admin.pem, when
   this user can read its key);
4. the user's default proxy /tmp/x509up_u<uid>, then a token in $XDG_RUNTIME_DIR/bt_u<uid>.

Services are trusted through --ca, VWS_CA or DATA_DIR/pki/ca.pem. A proxy is logged in once
(AuthService) and its session kept in ~/.cache/vws/sessions until it ends. --insecure (or
VWS_INSECURE=1) calls in plain text, for a stack started with --insecure."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib

from ..common import clients, errors, tls

SESSION_MARGIN = dt.timedelta(minutes=2)


@dataclasses.dataclass
class Choice:
    kind: str                  # token, proxy, certificate, admin, insecure
    source: str                # where it was found, for messages and `vws whoami`
    path: str = ""
    key: str = ""
    token: str = ""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _readable(path: str | pathlib.Path) -> bool:
    return bool(path) and os.access(path, os.R_OK)


def _token_from_file(path: str, source: str) -> Choice:
    try:
        token = pathlib.Path(path).read_text().strip()
    except OSError as exc:
        raise errors.InvalidArgument(f"the token file {path} ({source}) cannot be read: {exc.strerror}",
                                     "token") from None
    if not token:
        raise errors.InvalidArgument(f"the token file {path} ({source}) is empty", "token")
    return Choice("token", source, path=path, token=token)


def choose(args, dd: pathlib.Path) -> Choice:
    uid = os.getuid()
    if getattr(args, "insecure", False) or _env("VWS_INSECURE") in ("1", "true", "yes"):
        return Choice("insecure", "--insecure" if getattr(args, "insecure", False) else "VWS_INSECURE")
    if getattr(args, "token", None):
        t = args.token
        return _token_from_file(t[1:], "--token @FILE") if t.startswith("@") else Choice("token", "--token", token=t)
    if getattr(args, "proxy", None):
        return Choice("proxy", "--proxy", path=args.proxy)
    if getattr(args, "cert", None):
        return Choice("certificate", "--cert", path=args.cert, key=getattr(args, "key", None) or args.cert)
    if _env("BEARER_TOKEN"):
        return Choice("token", "BEARER_TOKEN", token=_env("BEARER_TOKEN"))
    if _env("BEARER_TOKEN_FILE"):
        return _token_from_file(_env("BEARER_TOKEN_FILE"), "BEARER_TOKEN_FILE")
    if _env("X509_USER_PROXY"):
        return Choice("proxy", "X509_USER_PROXY", path=_env("X509_USER_PROXY"))
    if _env("X509_USER_CERT"):
        return Choice("certificate", "X509_USER_CERT", path=_env("X509_USER_CERT"),
                      key=_env("X509_USER_KEY") or _env("X509_USER_CERT"))
    admin_cert, admin_key = dd / "pki" / "admin.pem", dd / "pki" / "admin.key"
    if _readable(admin_cert) and _readable(admin_key):
        return Choice("admin", f"the administrator credential in {dd / 'pki'}", path=str(admin_cert),
                      key=str(admin_key))
    if _readable(f"/tmp/x509up_u{uid}"):
        return Choice("proxy", "the default proxy", path=f"/tmp/x509up_u{uid}")
    runtime = _env("XDG_RUNTIME_DIR")
    if runtime and _readable(f"{runtime}/bt_u{uid}"):
        return _token_from_file(f"{runtime}/bt_u{uid}", "XDG_RUNTIME_DIR")
    raise errors.Unauthenticated(
        "no credential found: give --cert/--key, --proxy (or X509_USER_PROXY; voms-proxy-init makes one), --token "
        f"(or BEARER_TOKEN), or run as a user who can read the stack's administrator credential in {dd / 'pki'}")


def ca_bundle(args, dd: pathlib.Path) -> bytes:
    path = getattr(args, "ca", None) or _env("VWS_CA") or str(dd / "pki" / "ca.pem")
    try:
        return pathlib.Path(path).read_bytes()
    except OSError:
        raise errors.InvalidArgument(
            f"no CA certificate at {path} to check the services with; start the stack with `vws up` (it makes one), "
            "or give --ca FILE (or VWS_CA) with the site's CA certificate", "ca") from None


def public_client(args, dd: pathlib.Path) -> tuple[bytes, bytes]:
    """The site's public client certificate and key (they name no one), beside the CA
    certificate: what a caller with a bearer token presents to TLS."""
    ca_path = pathlib.Path(getattr(args, "ca", None) or _env("VWS_CA") or dd / "pki" / "ca.pem")
    for d in (ca_path.parent, dd / "pki"):
        try:
            return (d / "public-client.pem").read_bytes(), (d / "public-client.key").read_bytes()
        except OSError:
            continue
    raise errors.InvalidArgument(
        f"no public-client.pem and public-client.key beside {ca_path}: a token or proxy user needs the site's "
        "public client certificate (the site publishes it with its CA certificate)", "ca")


def _read_pair(choice: Choice) -> tuple[bytes, bytes]:
    try:
        return pathlib.Path(choice.path).read_bytes(), pathlib.Path(choice.key).read_bytes()
    except OSError as exc:
        raise errors.InvalidArgument(f"the certificate or key from {choice.source} cannot be read: {exc}",
                                     "cert") from None


def configure(args, dd: pathlib.Path, repository_address=None) -> Choice:
    """Sets the process's transport (clients.use) from the chosen credential. A proxy is
    logged in at the repository (`repository_address()` finds it) unless a session is cached."""
    choice = choose(args, dd)
    if choice.kind == "insecure":
        clients.use(None)
        return choice
    ca = ca_bundle(args, dd)
    if choice.kind in ("certificate", "admin"):
        cert, key = _read_pair(choice)
        clients.use(tls.Identity(ca, cert, key))
    else:
        anyone = tls.Identity(ca, *public_client(args, dd))
        if choice.kind == "proxy":
            clients.use(anyone)
            choice.token = session_for(choice.path, repository_address() if repository_address else "")
        clients.use(anyone, bearer=choice.token)
    return choice


def _cache_path(proxy: str, address: str) -> pathlib.Path:
    base = pathlib.Path(_env("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "vws" / "sessions"
    st = os.stat(proxy)
    key = hashlib.sha256(f"{os.path.realpath(proxy)}|{st.st_mtime_ns}|{st.st_ino}|{address}".encode()).hexdigest()
    return base / f"{key[:32]}.json"


def session_for(proxy: str, address: str, fresh: bool = False) -> str:
    """A session token for this proxy at this repository: cached, or from a new login."""
    # Here only: the auth package loads cryptography, JWT and ASN.1 parsers, which only a proxy needs.
    from ..common.auth.service import login
    if not os.path.exists(proxy):
        raise errors.InvalidArgument(f"the proxy {proxy} does not exist; make one with voms-proxy-init", "proxy")
    cache = _cache_path(proxy, address)
    now = dt.datetime.now(dt.timezone.utc)
    if not fresh:
        try:
            doc = json.loads(cache.read_text())
            if dt.datetime.fromisoformat(doc["expiry"]) - SESSION_MARGIN > now:
                return doc["token"]
        except (OSError, ValueError, KeyError):
            pass
    token, expiry, _ = login(clients.channel(address), proxy)
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(cache.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"token": token, "expiry": expiry.isoformat(), "repository": address}, fh)
    os.replace(cache.with_suffix(".tmp"), cache)
    return token


def explain_unavailable(message: str) -> str:
    """A hint for a connection TLS refused (an UNAVAILABLE call's message), or '' when it is not that."""
    text = message.lower()
    if any(w in text for w in ("handshake", "ssl", "certificate", "tls")):
        return (" (TLS refused the connection: is the service's CA the one given by --ca, VWS_CA or the stack's "
                "pki/ca.pem? A stack started with --insecure needs --insecure here)")
    return ""

