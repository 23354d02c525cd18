"""The site's authorisation policy: a TOML file of rules on identity and attributes, reloaded
when it changes (a broken new file keeps the old policy and logs why).

The first rule that matches a principal decides: which kinds it may create, the most one
workspace may have, the quota of the group it counts against, and how its workspaces are
customised. No matching rule: nothing may be created. Format: docs/policy.md.

A rule's `kinds` take the names in vws.common.kinds.POLICY_NAMES. A kind's own name covers its
pooled form too: "account" allows every Unix account, made for the workspace or leased from an
account pool; "pool" allows only accounts leased from a pool. An account is leased from a pool
when the manager it is placed on leases from one (the repository says so in the request), or
when the rule itself puts it in one (`customise.account_pool`: only that pool's managers take it)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import fnmatch
import logging
import os
import pathlib
import re
import threading
import time
import tomllib

from ..common import kinds, model, units
from ..common.auth.principal import CredentialKind, Principal
from ..common.errors import InvalidArgument, PermissionDenied, ResourceExhausted

log = logging.getLogger(__name__)

_LIMIT_FIELDS = {  # policy key -> (parser, formatter, request attribute, request field path)
    "memory": (units.parse_size, units.format_size, "memory_bytes", "workspace.spec.resources.memory_bytes"),
    "cpu": (units.parse_cpu, lambda v: f"{v}m", "cpu_millis", "workspace.spec.resources.cpu_millis"),
    "disk": (units.parse_size, units.format_size, "disk_bytes", "workspace.spec.resources.disk_bytes"),
    "bandwidth": (units.parse_bandwidth, lambda v: f"{v} bit/s", "bandwidth_bits_per_second",
                  "workspace.spec.resources.network_bits_per_second"),
}
# Each policy name's kind: "pool" is an account's pooled form.
_TRAITS_OF = {name: t for t in kinds.TABLE.values() for name in t.policy_names}
_RULE_KEYS = {"name", "match", "kinds", "limits", "quota_group", "quota", "customise"}
_MATCH_KEYS = {"identity", "fqan", "group", "credential"}
_QUOTA_KEYS = {"workspaces", "memory", "cpu", "reserved_minutes"}
_CUSTOM_KEYS = {"account_pool", "unix_group", "environment", "image"}


@dataclasses.dataclass(frozen=True)
class WorkspaceRequest:
    """What the policy looks at in a create request."""
    kind: str                                  # its policy name (kinds.POLICY_NAMES): account, pool, ...
    memory_bytes: int = 0
    cpu_millis: int = 0
    disk_bytes: int = 0
    bandwidth_bits_per_second: int = 0
    lifetime: dt.timedelta = dt.timedelta(0)
    image: str = ""

    @classmethod
    def from_spec(cls, spec: model.WorkspaceSpec, pooled: bool = False) -> "WorkspaceRequest":
        """From an admitted spec (defaults filled); `pooled`: an account leased from a pool."""
        r = spec.resources
        return cls(kinds.of(spec.kind).policy_name(pooled), r.memory_bytes, r.cpu_millis, r.disk_bytes,
                   r.network_bits_per_second, spec.lifetime or dt.timedelta(0), spec.software.image)


@dataclasses.dataclass(frozen=True)
class GroupUsage:
    """What a quota group holds now (its live workspaces), as the caller counted it."""
    workspaces: int = 0
    memory_bytes: int = 0
    cpu_millis: int = 0
    reserved_minutes: float = 0.0


@dataclasses.dataclass(frozen=True)
class Limits:
    memory_bytes: int | None = None
    cpu_millis: int | None = None
    disk_bytes: int | None = None
    bandwidth_bits_per_second: int | None = None
    lifetime: dt.timedelta | None = None


@dataclasses.dataclass(frozen=True)
class Quota:
    workspaces: int | None = None
    memory_bytes: int | None = None
    cpu_millis: int | None = None
    reserved_minutes: float | None = None


@dataclasses.dataclass(frozen=True)
class Customisation:
    account_pool: str = ""
    unix_group: str = ""
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    image: str = ""


@dataclasses.dataclass(frozen=True)
class Reason:
    field: str       # the request field (or "credential") the refusal is about
    message: str     # what is wrong and how to fix it


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str                                  # the rule that decided ("" when none matched)
    reasons: tuple[Reason, ...] = ()           # policy refusals (kind, limits, no rule)
    exceeded: tuple[Reason, ...] = ()          # quota refusals
    kinds: tuple[str, ...] = ()
    limits: Limits = Limits()
    quota_group: str = ""
    quota: Quota = Quota()
    customisation: Customisation = Customisation()

    def raise_if_refused(self) -> None:
        """PERMISSION_DENIED for what the policy forbids, RESOURCE_EXHAUSTED for a full quota."""
        if self.reasons:
            raise PermissionDenied("; ".join(f"{r.field}: {r.message}" for r in self.reasons))
        if self.exceeded:
            raise ResourceExhausted("; ".join(f"{r.field}: {r.message}" for r in self.exceeded),
                                    [(f"quota group {self.quota_group}", r.message) for r in self.exceeded])


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    identity: tuple[re.Pattern, ...]
    fqan: tuple[re.Pattern, ...]
    group: tuple[re.Pattern, ...]
    credential: tuple[CredentialKind, ...]
    kinds: tuple[str, ...]
    limits: Limits
    quota_group: str
    quota: Quota
    customise: Customisation

    def matches(self, p: Principal) -> bool:
        if self.credential and p.kind not in self.credential:
            return False
        if self.identity and not any(r.fullmatch(p.identity) for r in self.identity):
            return False
        if self.fqan or self.group:
            attr = self.fqan if p.kind is CredentialKind.PROXY else self.group if p.kind is CredentialKind.TOKEN else ()
            return any(r.fullmatch(a) for r in attr for a in p.attributes)
        return True


def _glob(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern))


def _fill(template: str, p: Principal) -> str:
    """`{vo}`, `{identity}`, `{attribute}` (the primary FQAN or group) in customisation values."""
    return (template.replace("{vo}", p.vo).replace("{identity}", p.identity)
            .replace("{attribute}", p.attributes[0] if p.attributes else ""))


class Policy:
    def __init__(self, rules: list[Rule], source: str = ""):
        self.rules = rules
        self.source = source

    @classmethod
    def parse(cls, text: str, source: str = "policy") -> "Policy":
        """Raises InvalidArgument naming the key and the fix."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{source} is not valid TOML: {exc}") from None
        unknown = set(doc) - {"rule", "quota"}
        if unknown:
            raise InvalidArgument(f"{source}: unknown top-level key(s) {sorted(unknown)}; use [[rule]] and [quota.<group>]")
        quotas = {name: _quota(q, f"{source}: quota.{name}") for name, q in doc.get("quota", {}).items()}
        rules = []
        for i, raw in enumerate(doc.get("rule", [])):
            rules.append(_rule(raw, f"{source}: rule[{i}]", i, quotas))
        return cls(rules, source)

    def rule_for(self, p: Principal) -> Rule | None:
        return next((r for r in self.rules if r.matches(p)), None)

    def decide(self, p: Principal, request: WorkspaceRequest, usage: GroupUsage | None = None) -> Decision:
        rule = self.rule_for(p)
        if rule is None:
            return Decision(False, "", (Reason("credential", _no_rule(p)),))
        custom = Customisation(_fill(rule.customise.account_pool, p), _fill(rule.customise.unix_group, p),
                               {k: _fill(v, p) for k, v in rule.customise.environment.items()},
                               rule.customise.image)
        group = _fill(rule.quota_group, p)
        reasons = []
        traits = _TRAITS_OF[request.kind]
        asked = traits.policy_name(pooled=True) if custom.account_pool else request.kind  # the rule leases it
        if asked not in rule.kinds and traits.name not in rule.kinds:
            reasons.append(Reason("workspace.spec.kind", f"{asked} workspaces are not allowed for "
                                  f"{_who(p)} (rule {rule.name}); ask for {' or '.join(rule.kinds) or 'nothing'}"
                                  + (_POOLED if traits.pooled_name in rule.kinds else "")
                                  if rule.kinds else f"rule {rule.name} allows no kind of workspace to {_who(p)}"))
        for key, (_, fmt, attr, path) in _LIMIT_FIELDS.items():
            cap, asked = getattr(rule.limits, attr), getattr(request, attr)
            if cap is not None and asked > cap:
                reasons.append(Reason(path, f"{fmt(asked)} is over the {fmt(cap)} allowed to {_who(p)} "
                                      f"(rule {rule.name}); ask for at most {fmt(cap)}"))
        if rule.limits.lifetime is not None and request.lifetime > rule.limits.lifetime:
            cap = units.format_duration(rule.limits.lifetime)
            reasons.append(Reason("workspace.spec.lifetime", f"{units.format_duration(request.lifetime)} is over the "
                                  f"{cap} allowed to {_who(p)} (rule {rule.name}); ask for at most {cap}"))
        exceeded = _exceeded(rule.quota, group, request, usage or GroupUsage()) if not reasons else []
        return Decision(not reasons and not exceeded, rule.name, tuple(reasons), tuple(exceeded), rule.kinds,
                        rule.limits, group, rule.quota, custom)

    def summary(self, p: Principal) -> dict:
        """What `vws whoami` shows: the identity, its attributes and what the policy allows it."""
        rule = self.rule_for(p)
        out = {"identity": p.identity, "credential": p.kind.value, "issuer": p.issuer, "vo": p.vo,
               "attributes": list(p.attributes), "scopes": list(p.scopes),
               "expiry": p.expiry.isoformat(), "rule": rule.name if rule else ""}
        if rule is None:
            out["allowed"] = _no_rule(p)
            return out
        lim = {k: fmt(getattr(rule.limits, attr)) for k, (_, fmt, attr, _) in _LIMIT_FIELDS.items()
               if getattr(rule.limits, attr) is not None}
        if rule.limits.lifetime is not None:
            lim["lifetime"] = units.format_duration(rule.limits.lifetime)
        quota = {k: v for k, v in dataclasses.asdict(rule.quota).items() if v is not None}
        for k, fmt in (("memory_bytes", units.format_size), ("cpu_millis", lambda v: f"{v}m")):
            if k in quota:
                quota[k] = fmt(quota[k])
        custom = {k: v for k, v in dataclasses.asdict(rule.customise).items() if v}
        out.update(kinds=list(rule.kinds), limits=lim, quota_group=_fill(rule.quota_group, p), quota=quota,
                   customisation={k: ({n: _fill(x, p) for n, x in v.items()} if isinstance(v, dict) else _fill(v, p))
                                  for k, v in custom.items()})
        return out


_POOLED = (" (an account leased from an account pool: placed on a manager that leases from one; `vws managers` "
           "shows each one's pool)")


def _who(p: Principal) -> str:
    return f"{p.identity} with {', '.join(p.attributes)}" if p.attributes else p.identity


def _no_rule(p: Principal) -> str:
    return (f"no rule of this site's policy admits {_who(p)}; use a credential with the attributes the site "
            "admits (`vws whoami` shows yours), or ask the site to add a rule")


def _exceeded(q: Quota, group: str, r: WorkspaceRequest, u: GroupUsage) -> list[Reason]:
    out = []
    minutes = r.lifetime.total_seconds() / 60
    for field, cap, held, asked, fmt in (
            ("workspaces", q.workspaces, u.workspaces, 1, str),
            ("workspace.spec.resources.memory_bytes", q.memory_bytes, u.memory_bytes, r.memory_bytes,
             units.format_size),
            ("workspace.spec.resources.cpu_millis", q.cpu_millis, u.cpu_millis, r.cpu_millis, lambda v: f"{v}m"),
            ("workspace.spec.lifetime", q.reserved_minutes, u.reserved_minutes, minutes,
             lambda v: f"{v:.0f} reserved minutes")):
        if cap is not None and held + asked > cap:
            left = max(cap - held, 0)
            fix = ("destroy one of the group's workspaces first" if field == "workspaces"
                   else f"ask for at most {fmt(left)}, or destroy workspaces of the group first")
            out.append(Reason(field, f"quota group {group} holds {fmt(held)} of its {fmt(cap)}; this request "
                              f"needs {fmt(asked)} more; {fix}"))
    return out


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise InvalidArgument(f"{where} must be a table")
    unknown = set(d) - allowed
    if unknown:
        raise InvalidArgument(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _strings(v, where: str) -> tuple[str, ...]:
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"{where} must be a string or a list of strings")
    return tuple(v)


def _quota(q: dict, where: str) -> Quota:
    _check_keys(q, _QUOTA_KEYS, where)
    return Quota(workspaces=q.get("workspaces"),
                 memory_bytes=units.parse_size(q["memory"], f"{where}.memory") if "memory" in q else None,
                 cpu_millis=units.parse_cpu(q["cpu"], f"{where}.cpu") if "cpu" in q else None,
                 reserved_minutes=q.get("reserved_minutes"))


def _rule(raw: dict, where: str, index: int, quotas: dict[str, Quota]) -> Rule:
    _check_keys(raw, _RULE_KEYS, where)
    name = raw.get("name", f"rule-{index}")
    where = f"{where.split(':')[0]}: rule {name}"
    match = raw.get("match", {})
    _check_keys(match, _MATCH_KEYS, f"{where}.match")
    creds = _strings(match.get("credential", []), f"{where}.match.credential")
    try:
        credential = tuple(CredentialKind(c) for c in creds)
    except ValueError:
        raise InvalidArgument(f"{where}.match.credential: {list(creds)}; use certificate, proxy or token") from None
    allowed = _strings(raw.get("kinds", []), f"{where}.kinds")
    bad = [k for k in allowed if k not in kinds.POLICY_NAMES]
    if bad:
        raise InvalidArgument(f"{where}.kinds: {bad} are not kinds; use {', '.join(kinds.POLICY_NAMES)}")
    lim = raw.get("limits", {})
    _check_keys(lim, set(_LIMIT_FIELDS) | {"lifetime"}, f"{where}.limits")
    limits = Limits(**{attr: parse(lim[k], f"{where}.limits.{k}") for k, (parse, _, attr, _) in _LIMIT_FIELDS.items()
                       if k in lim},
                    lifetime=units.parse_duration(lim["lifetime"], f"{where}.limits.lifetime")
                    if "lifetime" in lim else None)
    quota_group = raw.get("quota_group", name)
    if "quota" in raw:
        quota = _quota(raw["quota"], f"{where}.quota")
    else:
        quota = quotas.get(quota_group, Quota())
    cust = raw.get("customise", {})
    _check_keys(cust, _CUSTOM_KEYS, f"{where}.customise")
    env = cust.get("environment", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise InvalidArgument(f"{where}.customise.environment must be a table of strings, e.g. {{VO = \"{{vo}}\"}}")
    return Rule(name=name, identity=tuple(_glob(x) for x in _strings(match.get("identity", []), f"{where}.match.identity")),
                fqan=tuple(_glob(x) for x in _strings(match.get("fqan", []), f"{where}.match.fqan")),
                group=tuple(_glob(x) for x in _strings(match.get("group", []), f"{where}.match.group")),
                credential=credential, kinds=allowed, limits=limits, quota_group=quota_group, quota=quota,
                customise=Customisation(cust.get("account_pool", ""), cust.get("unix_group", ""), dict(env),
                                        cust.get("image", "")))


class PolicyFile:
    """A policy file, re-read when its mtime, size or inode changes; checked at most every
    `check_interval` seconds so that a call costs a clock read, not a stat."""

    def __init__(self, path: str | os.PathLike, check_interval: float = 1.0):
        self.path = pathlib.Path(path)
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._stamp = self._stat()
        self.policy = Policy.parse(self.path.read_text(), str(self.path))  # a broken first file stops the start
        self.error = ""

    def _stat(self):
        st = os.stat(self.path)
        return st.st_mtime_ns, st.st_size, st.st_ino

    @property
    def current(self) -> Policy:
        now = time.monotonic()
        if now < self._next_check:
            return self.policy
        with self._lock:
            self._next_check = now + self.check_interval
            try:
                stamp = self._stat()
            except OSError as exc:
                if self.error != str(exc):
                    self.error = str(exc)
                    log.warning("policy %s cannot be read (%s); keeping the policy loaded before", self.path, exc)
                return self.policy
            if stamp == self._stamp:
                return self.policy
            self._stamp = stamp
            try:
                self.policy = Policy.parse(self.path.read_text(), str(self.path))
                self.error = ""
                log.info("policy %s reloaded: %d rules", self.path, len(self.policy.rules))
            except (InvalidArgument, OSError, UnicodeDecodeError) as exc:
                self.error = str(exc)
                log.warning("policy %s not reloaded, keeping the one loaded before: %s", self.path, exc)
            return self.policy

    def decide(self, p: Principal, request: WorkspaceRequest, usage: GroupUsage | None = None) -> Decision:
        return self.current.decide(p, request, usage)

    def summary(self, p: Principal) -> dict:
        return self.current.summary(p)
