"""`vws whoami`, `vws login`, `vws grant`, `vws revoke`, `vws acl`, `vws audit`: who you are to
the site, who else may manage a workspace, and what was done."""
from __future__ import annotations

import datetime as dt

from . import credentials
from . import output as out
from .connection import TIMEOUT, CliError, Connection, workspace_name
from ..common import units
from ..v1 import access_pb2

ROLES = {"viewer": access_pb2.RoleBinding.ROLE_VIEWER, "operator": access_pb2.RoleBinding.ROLE_OPERATOR,
         "manager": access_pb2.RoleBinding.ROLE_MANAGER}


def _role_name(value: int) -> str:
    return out.enum_name(access_pb2.RoleBinding.Role, value, "ROLE_")


def _kind_name(value: int) -> str:
    return out.enum_name(access_pb2.Caller.CredentialKind, value, "CREDENTIAL_KIND_")


def member_of(text: str) -> str:
    """`identity:<DN>` / `group:<FQAN>` as given; a bare DN or FQAN is told apart by its form."""
    if text.startswith(("identity:", "group:")):
        return text
    # A DN has '=' in its first component (/C=CH/...); an FQAN or group does not (/atlas/...).
    first = text.lstrip("/").split("/", 1)[0]
    return f"identity:{text}" if "=" in first or not text.startswith("/") else f"group:{text}"


def cmd_whoami(args) -> int:
    r = Connection(args).access().GetCaller(access_pb2.GetCallerRequest(), timeout=TIMEOUT)
    choice = args.credential
    if args.output == "json":
        out.print_json({"caller": out.to_dict(r.caller), "entitlement": out.to_dict(r.entitlement),
                        "credential_source": choice.source if choice else ""})
        return 0
    c, e = r.caller, r.entitlement
    rows = [["identity", c.identity],
            ["credential", f"{_kind_name(c.credential_kind)} (from {choice.source})" if choice
             else _kind_name(c.credential_kind)]]
    if c.issuer:
        rows.append(["issuer", c.issuer])
    if c.attributes:
        rows.append(["attributes", ", ".join(c.attributes)])
    if c.scopes:
        rows.append(["scopes", " ".join(c.scopes)])
    if c.HasField("expire_time"):
        rows.append(["valid until", out.when(c.expire_time)])
    if c.administrator or c.service_role:
        rows.append(["role", "site administrator" if c.administrator else f"vws {c.service_role} service"])
    rows.append(["policy rule", e.rule or f"none: {e.reason}"])
    if e.rule:
        rows.append(["may create", ", ".join(e.kinds) or "nothing"])
        m = e.max_resources
        caps = [f"memory {units.format_size(m.memory_bytes)}" if m.memory_bytes else "",
                f"cpu {m.cpu_millis}m" if m.cpu_millis else "",
                f"disk {units.format_size(m.disk_bytes)}" if m.disk_bytes else "",
                f"lifetime {units.format_duration(e.max_lifetime.ToTimedelta())}" if e.HasField("max_lifetime") else ""]
        rows.append(["at most", ", ".join(x for x in caps if x) or "the site's own maxima"])
        if e.quota_group:
            q, u = e.quota, e.usage
            def of(have: str, limit: str) -> str:
                return f"{have} of {limit}" if limit else f"{have} (no limit)"
            held = [of(f"{u.workspaces} workspaces", str(q.workspaces) if q.workspaces else ""),
                    of(f"{units.format_size(u.memory_bytes)} memory",
                       units.format_size(q.memory_bytes) if q.memory_bytes else ""),
                    of(f"{u.cpu_millis}m cpu", f"{q.cpu_millis}m" if q.cpu_millis else ""),
                    of(f"{u.reserved_minutes:.0f} reserved minutes",
                       f"{q.reserved_minutes:.0f}" if q.reserved_minutes else "")]
            rows.append([f"quota {e.quota_group}", "; ".join(held)])
        cu = e.customisation
        custom = [f"account pool {cu.account_pool}" if cu.account_pool else "",
                  f"unix group {cu.unix_group}" if cu.unix_group else "",
                  f"image {cu.image}" if cu.image else "",
                  "env " + " ".join(f"{k}={v}" for k, v in sorted(cu.environment.items())) if cu.environment else ""]
        if any(custom):
            rows.append(["customised", "; ".join(x for x in custom if x)])
    width = max(len(k) for k, _ in rows) + 2
    for k, v in rows:
        print(f"{k:<{width}}{v}")
    return 0


def cmd_login(args) -> int:
    """Logs a proxy in now (later commands reuse the session until it ends)."""
    conn = Connection(args)
    conn.ready()
    choice = args.credential
    if choice.kind != "proxy":
        raise CliError("vws login is for proxies: give --proxy FILE or set X509_USER_PROXY (certificates and "
                       "tokens need no login)", 2)
    token = credentials.session_for(choice.path, conn.repository_address(), fresh=True)
    r = conn.access().GetCaller(access_pb2.GetCallerRequest(), timeout=TIMEOUT)
    expiry = r.caller.expire_time.ToDatetime(dt.timezone.utc)
    if args.output == "json":
        out.print_json({"identity": r.caller.identity, "attributes": list(r.caller.attributes),
                        "expire_time": expiry.isoformat(), "session_token_length": len(token)})
    else:
        print(f"logged in as {r.caller.identity}" + (f" with {', '.join(r.caller.attributes)}"
                                                       if r.caller.attributes else "")
              + f"; the session lasts until {expiry:%Y-%m-%d %H:%M:%S}Z")
    return 0


def _print_bindings(args, name: str, bindings) -> None:
    if args.output == "json":
        out.print_json({"name": name, "bindings": [out.to_dict(b) for b in bindings]})
        return
    rows = [[b.member, _role_name(b.role).lower(), b.granted_by or "-", out.when(b.grant_time)] for b in bindings]
    print(out.table(rows, ["MEMBER", "ROLE", "GRANTED BY", "SINCE"]))


def cmd_acl(args) -> int:
    name = workspace_name(args.name)
    r = Connection(args).access().ListRoleBindings(access_pb2.ListRoleBindingsRequest(name=name), timeout=TIMEOUT)
    _print_bindings(args, name, r.bindings)
    return 0


def cmd_grant(args) -> int:
    name = workspace_name(args.name)
    r = Connection(args).access().GrantRole(access_pb2.GrantRoleRequest(
        name=name, binding=access_pb2.RoleBinding(member=member_of(args.member), role=ROLES[args.role])),
        timeout=TIMEOUT)
    _print_bindings(args, name, r.bindings)
    return 0


def cmd_revoke(args) -> int:
    name = workspace_name(args.name)
    r = Connection(args).access().RevokeRole(access_pb2.RevokeRoleRequest(name=name, member=member_of(args.member)),
                                             timeout=TIMEOUT)
    _print_bindings(args, name, r.bindings)
    return 0


def cmd_audit(args) -> int:
    req = access_pb2.ListAuditEntriesRequest(page_size=min(args.limit, 1000), identity=args.identity or "",
                                             target=workspace_name(args.target) if args.target else "",
                                             outcome=(args.outcome or "").upper())
    if args.since:
        req.start_time.FromDatetime(dt.datetime.now(dt.timezone.utc) - units.parse_duration(args.since, "--since"))
    stub, entries = Connection(args).access(), []
    while len(entries) < args.limit:
        r = stub.ListAuditEntries(req, timeout=TIMEOUT)
        entries.extend(r.entries)
        if not r.next_page_token:
            break
        req.page_token = r.next_page_token
    entries = entries[:args.limit]
    if args.output == "json":
        out.print_json({"entries": [out.to_dict(e) for e in entries]})
        return 0
    rows = [[out.when(e.time), e.identity or "(unauthenticated)", e.action, e.target or "-", e.outcome,
             e.source, e.message] for e in entries]
    print(out.table(rows, ["TIME", "IDENTITY", "ACTION", "TARGET", "OUTCOME", "SOURCE", "MESSAGE"]))
    return 0


def add_parsers(command) -> None:
    command("whoami", cmd_whoami, "who you are to the site: identity, attributes, and what the policy allows you",
            read=True)
    command("login", cmd_login, "log a VOMS proxy in (--proxy or X509_USER_PROXY); later commands reuse the session",
            read=True)
    c = command("acl", cmd_acl, "who may do what with a workspace", read=True)
    c.add_argument("name", help="the workspace (its id or workspaces/ID)")
    c = command("grant", cmd_grant, "let an identity or a group view, operate or manage a workspace: viewer sees it; "
                "operator also starts, stops, pauses and execs; manager does everything, granting included",
                read=True)
    c.add_argument("name", help="the workspace")
    c.add_argument("member", help="a DN (/C=CH/O=Grid/CN=Bob), an FQAN or group (/atlas/Role=production), or "
                                  "identity:... / group:... to be explicit")
    c.add_argument("role", choices=sorted(ROLES), help="the role")
    c = command("revoke", cmd_revoke, "take a role back (the owner's cannot be)", read=True)
    c.add_argument("name", help="the workspace")
    c.add_argument("member", help="as granted")
    c = command("audit", cmd_audit, "the audit trail of state-changing calls, oldest first (administrators see "
                "everyone's; others their own)", read=True)
    c.add_argument("--identity", help="only this caller's")
    c.add_argument("--target", help="only calls on this workspace")
    c.add_argument("--outcome", help="only this outcome: OK, PERMISSION_DENIED, UNAUTHENTICATED, ...")
    c.add_argument("--since", help="only the last DURATION (1h, 2d)")
    c.add_argument("--limit", type=int, default=200, help="at most this many entries (default 200)")
