"""AccessService: the caller, role bindings and the audit trail. Thin: the gate has checked the
role a method needs; this converts and calls the AccessStore and the site's policy."""
from __future__ import annotations

from ..common import converters, kinds
from ..common.auth import gate
from .policy import GroupUsage, PolicyFile, Quota, WorkspaceRequest
from .access import AccessStore, AuditEntry, Binding
from ..v1 import access_pb2, access_pb2_grpc, workspace_pb2

_ROLE_TO_PB = {r: access_pb2.RoleBinding.Role.Value(f"ROLE_{r.name}") for r in gate.Role}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
NO_POLICY = ("this site has no policy file: any verified caller may create workspaces within the site's own "
             "limits")


def binding_to_pb(b: Binding) -> access_pb2.RoleBinding:
    msg = access_pb2.RoleBinding(member=b.member, role=_ROLE_TO_PB[b.role], granted_by=b.granted_by)
    if b.grant_time is not None:
        msg.grant_time.CopyFrom(converters.ts_to_pb(b.grant_time))
    return msg


def role_from_pb(value: int) -> gate.Role | None:
    """None for ROLE_UNSPECIFIED or a value this build does not know."""
    return _ROLE_FROM_PB.get(value)


def audit_entry_to_pb(e: AuditEntry) -> access_pb2.AuditEntry:
    msg = access_pb2.AuditEntry(sequence=e.sequence, identity=e.identity, attributes=e.attributes, source=e.source,
                                service=e.service, action=e.action, target=e.target, outcome=e.outcome,
                                message=e.message)
    if e.time is not None:
        msg.time.CopyFrom(converters.ts_to_pb(e.time))
    return msg


def audit_entry_from_pb(m: access_pb2.AuditEntry, service: str) -> AuditEntry:
    """An entry another service sends (AppendAuditEntry); `service` is who it is, as verified.
    Its time, when it has one, is when the call ended (it may reach the repository later)."""
    return AuditEntry(identity=m.identity, attributes=tuple(m.attributes), source=m.source, service=service,
                      action=m.action, target=m.target, outcome=m.outcome, message=m.message,
                      time=converters.ts_from_pb(m, "time"))


def quota_to_pb(q: Quota | GroupUsage) -> access_pb2.Quota:
    """Limits (None: no limit, sent as 0) or holdings."""
    return access_pb2.Quota(workspaces=q.workspaces or 0, memory_bytes=q.memory_bytes or 0,
                            cpu_millis=q.cpu_millis or 0, reserved_minutes=q.reserved_minutes or 0.0)


def entitlement(policy: PolicyFile | None, access: AccessStore, caller: gate.Caller) -> access_pb2.Entitlement:
    """What the policy allows the caller, with its quota group's holdings now (`vws whoami`, and
    what the factory customises a create with)."""
    if policy is None:
        return access_pb2.Entitlement(reason=NO_POLICY)
    if caller.principal is None:
        return access_pb2.Entitlement(reason=f"{caller.identity} is a vws service, not a person; services "
                                             "create nothing for themselves")
    # The rule's terms for this principal, placeholders filled; what was asked does not matter here.
    d = policy.decide(caller.principal, WorkspaceRequest(kind=kinds.of(kinds.DEFAULT).name))
    if not d.rule:
        return access_pb2.Entitlement(reason=d.reasons[0].message if d.reasons else "")
    lim = d.limits
    msg = access_pb2.Entitlement(
        rule=d.rule, kinds=d.kinds, quota_group=d.quota_group, quota=quota_to_pb(d.quota),
        usage=quota_to_pb(access.group_usage(d.quota_group)),
        max_resources=workspace_pb2.ResourceAllocation(
            memory_bytes=lim.memory_bytes or 0, disk_bytes=lim.disk_bytes or 0, cpu_millis=lim.cpu_millis or 0,
            network_bits_per_second=lim.bandwidth_bits_per_second or 0),
        customisation=workspace_pb2.Customisation(
            account_pool=d.customisation.account_pool, unix_group=d.customisation.unix_group,
            environment=d.customisation.environment, image=d.customisation.image))
    if lim.lifetime is not None:
        msg.max_lifetime.CopyFrom(converters.duration_to_pb(lim.lifetime))
    return msg


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, access: AccessStore, policy: PolicyFile | None):
        self.access, self.policy = access, policy

    def GetCaller(self, request, context):
        caller = gate.current()
        return access_pb2.GetCallerResponse(caller=converters.caller_to_pb(caller),
                                            entitlement=entitlement(self.policy, self.access, caller))

    def ListRoleBindings(self, request, context):
        return access_pb2.ListRoleBindingsResponse(
            bindings=[binding_to_pb(b) for b in self.access.bindings(request.name)])

    def GrantRole(self, request, context):
        bindings = self.access.grant(gate.current(), request.name, request.binding.member,
                                     role_from_pb(request.binding.role))
        return access_pb2.GrantRoleResponse(bindings=[binding_to_pb(b) for b in bindings])

    def RevokeRole(self, request, context):
        bindings = self.access.revoke(gate.current(), request.name, request.member)
        return access_pb2.RevokeRoleResponse(bindings=[binding_to_pb(b) for b in bindings])

    def ListAuditEntries(self, request, context):
        entries, token = self.access.audit_page(
            gate.current(), identity=request.identity, target=request.target, outcome=request.outcome,
            start=converters.ts_from_pb(request, "start_time"), end=converters.ts_from_pb(request, "end_time"),
            page_size=request.page_size, page_token=request.page_token)
        return access_pb2.ListAuditEntriesResponse(entries=[audit_entry_to_pb(e) for e in entries],
                                                   next_page_token=token)
