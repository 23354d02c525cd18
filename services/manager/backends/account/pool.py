"""A fixed pool of accounts, <pool_prefix>000 ... made once, leased to workspaces and scrubbed
back to the skeleton at destroy, then rested (quarantined) before the next lease. No useradd on
the path of a deploy. Leases live in SQLite (state_dir/pool.db) so they survive a crash."""
from __future__ import annotations

import logging
import os
import pwd
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from ....common import errors, model
from ..base import BackendSettings, HostHandle
from ..host import skeleton
from ..host.cgroups import CgroupDriver
from .backend import AccountBackend
from .users import add_account, getpw, run_account_tool, supplementary_groups, validate_prefix

log = logging.getLogger("vws.manager.backends")

FREE, LEASED, QUARANTINED = "free", "leased", "quarantined"


class AccountPool(AccountBackend):
    name = "account-pool"

    def __init__(self, settings: BackendSettings, cgroups: CgroupDriver | None = None,
                 clock=time.time):
        if settings.pool_size < 1:
            raise errors.InvalidArgument(f"is {settings.pool_size}; a pool needs at least one account", "pool_size")
        self.digits = max(3, len(str(settings.pool_size - 1)))
        validate_prefix(settings.pool_prefix, "pool_prefix", self.digits)
        super().__init__(settings, cgroups)
        self.prefix = self.account_pool = settings.pool_prefix
        self.gecos = f"vws-pool/{self.manager_id}"
        self.clock = clock
        self.accounts = [f"{self.prefix}{i:0{self.digits}d}" for i in range(settings.pool_size)]
        self._foreign: set[str] = set()
        self._lock = threading.RLock()
        self._db = sqlite3.connect(settings.state_dir / "pool.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS lease (account TEXT PRIMARY KEY, workspace_id TEXT NOT NULL "
                         "DEFAULT '', state TEXT NOT NULL DEFAULT 'free', until REAL NOT NULL DEFAULT 0)")
        self._db.executemany("INSERT OR IGNORE INTO lease (account) VALUES (?)", [(a,) for a in self.accounts])
        self._ensure_accounts()

    def offered_workspaces(self) -> int:
        return self.settings.pool_size

    # ------------------------------------------------------------------ accounts
    def _ensure_accounts(self) -> None:
        for name in self.accounts:
            pw = getpw(name)
            if pw is None:
                add_account(name, self.gecos, self.settings.skeleton_dir, self.settings.home_base)
                self._foreign.discard(name)
            elif pw.pw_gecos != self.gecos:
                if name not in self._foreign:
                    log.error("pool account %s exists but is not manager %s's (GECOS %r); it is not used",
                              name, self.manager_id, pw.pw_gecos)
                self._foreign.add(name)

    def _row(self, account: str) -> tuple[str, str, float] | None:
        return self._db.execute("SELECT workspace_id, state, until FROM lease WHERE account=?",
                                (account,)).fetchone()

    def _set(self, account: str, workspace_id: str, state: str, until: float = 0.0) -> None:
        self._db.execute("UPDATE lease SET workspace_id=?, state=?, until=? WHERE account=?",
                         (workspace_id, state, until, account))

    def _leased_to(self, workspace_id: str) -> str | None:
        row = self._db.execute("SELECT account FROM lease WHERE workspace_id=? AND state=?",
                               (workspace_id, LEASED)).fetchone()
        return row[0] if row else None

    def account(self, handle: HostHandle) -> pwd.struct_passwd:
        with self._lock:
            row = self._row(handle.host_identity)
        if row is None or row[1] != LEASED or row[0] != handle.workspace_id:
            raise errors.FailedPrecondition(f"pool account {handle.host_identity} is not leased to workspace "
                                            f"{handle.workspace_id}")
        pw = getpw(handle.host_identity)
        if pw is None:
            raise errors.FailedPrecondition(f"pool account {handle.host_identity} is gone from the host")
        return pw

    # ----------------------------------------------------------------- lifecycle
    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress=None) -> HostHandle:
        with self._lock:
            account = self._leased_to(workspace_id)
            if account is not None:
                return HostHandle(workspace_id, account)
            self.check_admission(spec)
            now = self.clock()
            rows = self._db.execute("SELECT account, state, until FROM lease ORDER BY account").fetchall()
            wanted = set(self.accounts) - self._foreign
            free = [a for a, s, u in rows if a in wanted and (s == FREE or (s == QUARANTINED and u <= now))]
            pick = next((a for a in free if getpw(a) is not None), None)
            if pick is None:
                leased = sum(1 for a, s, _ in rows if a in wanted and s == LEASED)
                resting = [u for a, s, u in rows if a in wanted and s == QUARANTINED and u > now]
                detail = f"{leased} of {len(self.accounts)} pool accounts leased"
                if resting:
                    detail += f", {len(resting)} resting after use (the next is free in {min(resting) - now:.0f}s)"
                raise errors.ResourceExhausted(f"manager {self.manager_id} has no free pool account: {detail}",
                                               [(f"managers/{self.manager_id}/accounts", detail)])
            self._set(pick, workspace_id, LEASED)
        return self.prepare_or_undo(pick, workspace_id, spec)

    def _restore_home(self, pw: pwd.struct_passwd) -> None:
        home = Path(pw.pw_dir)
        if not home.is_dir() or home.is_symlink():
            home.unlink(missing_ok=True) if home.is_symlink() else None
            home.mkdir(mode=0o700, parents=True)
        for e in os.scandir(home):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        skeleton.fill(home, self.settings.skeleton_dir, pw.pw_uid, pw.pw_gid)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(home, 0o700)

    # Each pool account keeps a filesystem of its own on its home across leases (made at its
    # first lease, emptied back to the skeleton at every return), so a lease formats nothing.
    def disk_key(self, handle: HostHandle) -> str:
        return handle.host_identity

    def mount_disk(self, pw, workspace_id, spec, home=None) -> None:
        want = spec.resources.disk_bytes
        if not want:
            return
        have = self.disks.usage(pw.pw_name)
        if have is not None and have[0] >= want and have[2] == pw.pw_dir:
            return  # at least what is asked, already on the home
        if have is not None:
            self.disks.release(pw.pw_name)  # too small: a bigger one replaces it
        self.disks.attach(pw.pw_name, want, home or Path(pw.pw_dir), pw.pw_uid, pw.pw_gid,
                          self.settings.skeleton_dir)

    def unmount_disk(self, workspace_id: str) -> None:
        """The account's filesystem stays with the account (see mount_disk)."""

    def sweep_disks(self) -> list[str]:
        images = self.disks.images()
        if not images:
            return []
        return self.disks.sweep(set(self.accounts))

    def _scrub_lease(self, account: str, workspace_id: str) -> None:
        pw = getpw(account)
        self.scrub(pw, workspace_id)
        if pw is not None:
            self.lock(account)
            if supplementary_groups(account):  # the groups a policy gave the last lease go with it
                run_account_tool(["usermod", "--groups", "", account])
            self._restore_home(pw)
        with self._lock:
            self._set(account, "", QUARANTINED, self.clock() + self.settings.quarantine_seconds)

    def destroy(self, handle: HostHandle) -> None:
        with self._lock:
            row = self._row(handle.host_identity)
        if row is not None and row[1] == LEASED and row[0] == handle.workspace_id:
            self._scrub_lease(handle.host_identity, handle.workspace_id)
        else:
            # Already returned (or leased to someone else since): only its cgroup may be left.
            self.kill_all(handle.workspace_id, None)
            self.unmount_disk(handle.workspace_id)
            self.remove_cgroup(handle.workspace_id)

    def exists(self, handle: HostHandle) -> bool:
        with self._lock:
            row = self._row(handle.host_identity)
        return (row is not None and row[1] == LEASED and row[0] == handle.workspace_id
                and getpw(handle.host_identity) is not None)

    def inventory(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT account, workspace_id FROM lease WHERE state=?", (LEASED,)))

    def reclaim(self, host_identity: str) -> None:
        with self._lock:
            row = self._row(host_identity)
        if row is None or row[1] != LEASED:
            return
        self._scrub_lease(host_identity, row[0])

    def maintain(self) -> None:
        super().maintain()
        with self._lock:
            self._db.execute("UPDATE lease SET state=?, workspace_id='', until=0 WHERE state=? AND until<=?",
                             (FREE, QUARANTINED, self.clock()))
        self._ensure_accounts()

    def close(self) -> None:
        super().close()
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ for tests
    def state_of(self, account: str) -> tuple[str, str, float] | None:
        with self._lock:
            return self._row(account)

    def remove_accounts(self) -> None:
        """Deletes every account of the pool (for tests and decommissioning), scrubbing leases first."""
        for name in self.accounts:
            pw = getpw(name)
            if pw is None or pw.pw_gecos != self.gecos:
                continue
            row = self.state_of(name)
            self.scrub(pw, row[0] if row and row[0] else f"pool-{name}")
            self.disks.release(name)
            run_account_tool(["userdel", "--remove", "--force", name], ok=(0, 6, 12))
