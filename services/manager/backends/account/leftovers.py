"""What an account leaves on the host outside its home: processes (logins and cron jobs outside
the workspace's cgroup too), files in the scratch directories, SysV IPC objects, a crontab, a
mail spool. Found by uid and removed."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from ....common import errors, host
from .users import ROOT_PATH

SCRATCH_DIRS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
CRONTABS = Path("/var/spool/cron/crontabs")
MAIL_SPOOL = Path("/var/mail")


def uid_pids(uid: int) -> list[int]:
    """Processes with uid as their real, effective, saved or filesystem user id."""
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if str(uid).encode() in line.split()[1:]:
                            found.append(pid)
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def kill_uid(uid: int, timeout: float = 5.0) -> None:
    """SIGKILLs every process of uid until none is left (processes outside the workspace's
    cgroup too: logins, cron jobs)."""
    deadline = time.monotonic() + timeout
    while True:
        live = [p for p in uid_pids(uid) if host.alive(p)]
        if not live:
            return
        if time.monotonic() > deadline:
            raise errors.BackendError(f"processes {live[:10]} of uid {uid} survived SIGKILL for {timeout:.0f}s")
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.002)


def remove_outside_home(pw: pwd.struct_passwd) -> None:
    """The account's crontab, its files in the scratch directories, its IPC objects and its mail.
    Kill its processes first."""
    if (CRONTABS / pw.pw_name).exists():
        if shutil.which("crontab", path=ROOT_PATH):
            subprocess.run(["crontab", "-r", "-u", pw.pw_name], capture_output=True, env={"PATH": ROOT_PATH})
        (CRONTABS / pw.pw_name).unlink(missing_ok=True)
    for top in SCRATCH_DIRS:
        _remove_owned(top, pw.pw_uid)
    _remove_ipc(pw.pw_uid)
    (MAIL_SPOOL / pw.pw_name).unlink(missing_ok=True)


def _remove_owned(top: Path, uid: int) -> None:
    """Removes everything under top (not top itself) that uid owns, without following links."""
    try:
        entries = list(os.scandir(top))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    for e in entries:
        try:
            st = e.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            try:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(e.path)  # fd-based on Linux: safe against symlink games
                else:
                    os.unlink(e.path)
            except FileNotFoundError:
                pass
        elif stat.S_ISDIR(st.st_mode):
            _remove_owned(Path(e.path), uid)


def _remove_ipc(uid: int) -> None:
    """SysV shared memory, semaphores and message queues that uid owns."""
    for kind, flag in (("shm", "-m"), ("sem", "-s"), ("msg", "-q")):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        header_uid = 7 if kind == "shm" else (4 if kind == "sem" else 8)
        for line in lines:
            cols = line.split()
            if len(cols) > header_uid and cols[header_uid] == str(uid):
                subprocess.run(["ipcrm", flag, cols[1]], capture_output=True, env={"PATH": ROOT_PATH})
