"""Host accounts: the account tools (useradd, usermod, userdel) run one at a time, account names
checked, an account's entry, groups and lock read and set."""
from __future__ import annotations

import grp
import pwd
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

from ....common import errors
from ..host import skeleton as home_skeleton

ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
MAX_ACCOUNT_NAME = 32
TYPICAL_WORKSPACE_ID = 12  # names.new_workspace_id(): "w" + 11
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"  # Debian's ENV_PATH
ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# useradd, usermod and userdel all rewrite /etc/passwd and /etc/shadow under lock files and fail
# (rather than wait) when another holds them: one at a time in this process, retried against others.
_ACCOUNT_TOOLS = threading.Lock()


def run_account_tool(argv: list[str], ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + 10
    while True:
        with _ACCOUNT_TOOLS:
            r = subprocess.run(argv, capture_output=True, text=True, env={"PATH": ROOT_PATH})
        if r.returncode in ok:
            return r
        if "lock" in r.stderr.lower() and time.monotonic() < deadline:
            time.sleep(0.02)
            continue
        raise errors.BackendError(f"{shlex.join(argv)} failed with status {r.returncode}: {r.stderr.strip()}")


def add_account(name: str, gecos: str, skeleton: Path, home_base: Path | None) -> pwd.struct_passwd:
    """A new account, locked (expired), with a group and a home (mode 0700) of its own holding a
    copy of skeleton, made under home_base (None: useradd's). The home is made here, not by
    useradd: its skeleton copy ignores a full disk (files cut short, status 0). On any failure
    nothing is left and the domain error is raised (skeleton.home_error)."""
    argv = ["useradd", "--no-create-home", "--shell", "/bin/bash", "--comment", gecos, "--expiredate", "1",
            "--user-group"]
    run_account_tool(argv + (["--base-dir", str(home_base)] if home_base else []) + [name])
    try:
        pw = pwd.getpwnam(name)
        home_skeleton.make_home(Path(pw.pw_dir), skeleton, pw.pw_uid, pw.pw_gid)
    except BaseException:
        # Without --remove: a home that was there before is not this account's to delete.
        run_account_tool(["userdel", "--force", name], ok=(0, 6))
        raise
    return pw


def validate_prefix(prefix: str, field: str, suffix_length: int) -> None:
    if not ACCOUNT_NAME.match(prefix):
        raise errors.InvalidArgument(
            f"{prefix!r} cannot start a Unix account name: use lower case letters, digits, '_' and '-', "
            "starting with a letter or '_'", field)
    if len(prefix) + suffix_length > MAX_ACCOUNT_NAME:
        raise errors.InvalidArgument(
            f"{prefix!r} is too long: account names are at most {MAX_ACCOUNT_NAME} characters and "
            f"{suffix_length} are needed after the prefix; use at most {MAX_ACCOUNT_NAME - suffix_length}", field)


def account_expiry(name: str) -> str | None:
    """The expiry field of the account's /etc/shadow entry ('' for none); None if no entry."""
    with open("/etc/shadow") as f:
        for line in f:
            parts = line.rstrip("\n").split(":")
            if parts[0] == name and len(parts) > 7:
                return parts[7]
    return None


def is_locked(name: str) -> bool:
    """Locked = expired (usermod -e 1): PAM refuses every login, ssh keys and cron included."""
    exp = account_expiry(name)
    return exp is not None and exp != "" and int(exp) <= int(time.time() // 86400)


def lock(name: str) -> None:
    if not is_locked(name):
        run_account_tool(["usermod", "--expiredate", "1", name])


def unlock(name: str) -> None:
    if account_expiry(name) != "":
        run_account_tool(["usermod", "--expiredate", "", name])


def getpw(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def supplementary_groups(name: str) -> list[str]:
    """The groups an account belongs to besides its own (/etc/group's member lists)."""
    return sorted(g.gr_name for g in grp.getgrall() if name in g.gr_mem)
