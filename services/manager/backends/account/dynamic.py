"""An account per workspace: <prefix><workspace id>, made at realise, deleted at destroy."""
from __future__ import annotations

import os
import pwd
import shutil

from ....common import errors, model
from ..base import BackendSettings, HostHandle
from ..host.cgroups import CgroupDriver
from .backend import AccountBackend
from .users import MAX_ACCOUNT_NAME, TYPICAL_WORKSPACE_ID, add_account, getpw, run_account_tool, validate_prefix


class DynamicAccounts(AccountBackend):
    """The GECOS field "<owner_mark>/<manager_id>/<workspace_id>" says whose an account is (':'
    cannot appear there)."""
    name = "dynamic-accounts"
    owner_mark = "vws"  # a plug-in of its own kind on the same manager marks its accounts otherwise

    def __init__(self, settings: BackendSettings, cgroups: CgroupDriver | None = None):
        validate_prefix(settings.account_prefix, "account_prefix", TYPICAL_WORKSPACE_ID)
        super().__init__(settings, cgroups)
        self.prefix = settings.account_prefix
        self.gecos_prefix = f"{self.owner_mark}/{self.manager_id}/"

    def offered_workspaces(self) -> int:
        return self.settings.max_workspaces

    def account_name(self, workspace_id: str) -> str:
        name = self.prefix + workspace_id
        if len(name) > MAX_ACCOUNT_NAME:
            raise errors.InvalidArgument(
                f"account name {name!r} would be longer than {MAX_ACCOUNT_NAME} characters", "workspace.name")
        return name

    def gecos(self, workspace_id: str) -> str:
        return self.gecos_prefix + workspace_id

    def owns(self, pw: pwd.struct_passwd, workspace_id: str) -> bool:
        """Whether pw is this plug-in's account of workspace_id."""
        return pw.pw_gecos == self.gecos(workspace_id)

    def account(self, handle: HostHandle) -> pwd.struct_passwd:
        pw = getpw(handle.host_identity)
        if pw is None:
            raise errors.FailedPrecondition(f"account {handle.host_identity} of {handle.workspace_id} is gone "
                                            "from the host")
        if not self.owns(pw, handle.workspace_id):
            raise errors.FailedPrecondition(f"account {handle.host_identity} does not belong to workspace "
                                            f"{handle.workspace_id} of manager {self.manager_id}")
        return pw

    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress=None) -> HostHandle:
        name = self.account_name(workspace_id)
        pw = getpw(name)
        if pw is not None:
            if self.owns(pw, workspace_id):
                return HostHandle(workspace_id, name)
            raise errors.FailedPrecondition(f"account {name} already exists on the host and is not "
                                            f"workspace {workspace_id}'s")
        self.check_admission(spec)
        add_account(name, self.gecos(workspace_id), self.settings.skeleton_dir, self.settings.home_base)
        return self.prepare_or_undo(name, workspace_id, spec)

    def destroy(self, handle: HostHandle) -> None:
        pw = getpw(handle.host_identity)
        if pw is not None and not self.owns(pw, handle.workspace_id):
            raise errors.FailedPrecondition(f"refusing to delete account {handle.host_identity}: it is not "
                                            f"workspace {handle.workspace_id}'s")
        self.scrub(pw, handle.workspace_id)
        if pw is not None:
            # 6: no such user (someone else removed it meanwhile); 12: home or mail spool not removable
            # --force: a killed process its parent has not reaped yet still counts as "in use"
            r = run_account_tool(["userdel", "--remove", "--force", handle.host_identity], ok=(0, 6, 12))
            if r.returncode == 12 and os.path.isdir(pw.pw_dir) and pw.pw_dir.startswith("/home/"):
                shutil.rmtree(pw.pw_dir, ignore_errors=True)

    def exists(self, handle: HostHandle) -> bool:
        pw = getpw(handle.host_identity)
        return pw is not None and self.owns(pw, handle.workspace_id)

    def inventory(self) -> dict[str, str]:
        return {pw.pw_name: pw.pw_gecos[len(self.gecos_prefix):] for pw in pwd.getpwall()
                if pw.pw_gecos.startswith(self.gecos_prefix)}

    def reclaim(self, host_identity: str) -> None:
        pw = getpw(host_identity)
        if pw is None:
            return
        if not pw.pw_gecos.startswith(self.gecos_prefix):
            raise errors.FailedPrecondition(f"refusing to reclaim account {host_identity}: manager "
                                            f"{self.manager_id} did not make it")
        self.destroy(HostHandle(pw.pw_gecos[len(self.gecos_prefix):], host_identity))
