"""Programs in a workspace: started as its account inside its cgroups (and, for a sandbox, its
namespaces), and all killed at stop."""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import struct
import subprocess
import threading
import weakref
from typing import Callable

from ....common import errors, names
from ..base import ExecOptions
from ..host.cgroups import CgroupDriver
from .leftovers import kill_uid
from .users import LOGIN_PATH, ROOT_PATH

log = logging.getLogger("vws.manager.backends")

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Runs as root with a clean environment: joins the workspace's cgroup(s) *before* anything of
# the user's runs, then drops to the account with setpriv. A preexec_fn would do the same in one
# process, but it runs Python between fork and exec in a multi-threaded server (gRPC threads),
# which can deadlock on a lock another thread held at fork; this path runs no Python in the child
# (subprocess's fork/exec is C). The user's variables travel encoded as VWSENV_<i>=NAME=value,
# inert to the root shell and setpriv (LD_PRELOAD and friends must never reach a root process),
# and are decoded by a shell already running as the user, which then execs the program.
DECODE = (r'__vws_n=$1; shift; __vws_i=0; '
          r'while [ "$__vws_i" -lt "$__vws_n" ]; do '
          r'eval "__vws_kv=\$VWSENV_$__vws_i; unset VWSENV_$__vws_i"; export "$__vws_kv" || exit 125; '
          r'__vws_i=$((__vws_i+1)); done; unset __vws_n __vws_i __vws_kv; exec "$@"')


# openat2(2): resolves a path below a directory, refusing `..` past it, absolute symlinks and
# symlinks leading out of it, in the kernel and so without a race against the user's renames.
SYS_OPENAT2, RESOLVE_NO_MAGICLINKS, RESOLVE_BENEATH = 437, 0x02, 0x08
_libc = ctypes.CDLL(None, use_errno=True)


def _open_beneath(home_fd: int, relative: str) -> int:
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    how = struct.pack("QQQ", flags, 0, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, home_fd, os.fsencode(relative), how, len(how))
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code != errno.ENOSYS:
        raise OSError(code, os.strerror(code))
    # A kernel before 5.6: walk it one component at a time, following no symlink at all.
    fd = os.dup(home_fd)
    try:
        for part in (p for p in relative.split("/") if p not in ("", ".")):
            if part == "..":
                raise OSError(errno.EXDEV, "leads out of the home")
            fd, parent = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd), fd
            os.close(parent)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_working_directory(home: str, wanted: str) -> int:
    """An O_PATH descriptor of the directory `wanted` names (relative to home, or absolute under
    it; empty: home), resolved without leaving home; InvalidArgument otherwise."""
    shown = repr(wanted[:80] + ("..." if len(wanted) > 80 else ""))
    relative = wanted
    if os.path.isabs(wanted):
        top = home.rstrip("/")
        if wanted != top and not wanted.startswith(top + "/"):
            raise errors.InvalidArgument(f"{shown} is outside the workspace's home; give a directory relative "
                                         "to the home, or an absolute one under it", "working_directory")
        relative = wanted[len(top):].lstrip("/")
    home_fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_beneath(home_fd, relative or ".")
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ELOOP):
            raise errors.InvalidArgument(f"{shown} leads out of the workspace's home (through '..' or a symlink); "
                                         "give a directory inside it", "working_directory") from None
        raise errors.InvalidArgument(f"{shown} is not a directory in the workspace's home",
                                     "working_directory") from None
    finally:
        os.close(home_fd)


def clean_env(pw: pwd.struct_passwd) -> dict[str, str]:
    return {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name,
            "SHELL": pw.pw_shell or "/bin/sh", "PATH": LOGIN_PATH, "LANG": "C.UTF-8"}


class Programs:
    def __init__(self, cgroups: CgroupDriver, enter_prefix: Callable[[str], str]):
        """enter_prefix(workspace_id): shell words run as root, already in the workspace's cgroups,
        between joining them and setpriv (a sandbox enters its namespaces there); empty, or
        ending with a space."""
        self.cgroups = cgroups
        self.enter_prefix = enter_prefix
        # Programs this process started, per workspace: reaped after a kill so that no zombie keeps
        # a cgroup busy or an account "in use" (the Exec servicer reaps them too, a moment later).
        self._children: dict[str, weakref.WeakSet] = {}
        self._children_lock = threading.Lock()

    def start(self, pw: pwd.struct_passwd, workspace_id: str, options: ExecOptions, *,
              stdin, stdout, stderr) -> subprocess.Popen:
        if not options.argv or not options.argv[0]:
            raise errors.InvalidArgument("is empty; give the program to run", "argv")
        env = clean_env(pw)
        for key, value in options.environment.items():
            if not ENV_NAME.match(key) or key.startswith(names.RESERVED_ENV_PREFIXES):
                raise errors.InvalidArgument(
                    f"{key!r} cannot be passed: variable names are letters, digits and '_', not starting "
                    "with a digit (and not VWSENV_* or __vws_*)", f"environment[{key}]")
            if "\0" in value:
                raise errors.InvalidArgument("contains a NUL character", f"environment[{key}]")
            env[key] = value
        # The child changes into the descriptor, not the path: a rename in between cannot redirect it.
        cwd_fd = open_working_directory(pw.pw_dir, options.working_directory)
        try:
            cwd = os.readlink(f"/proc/self/fd/{cwd_fd}")
            program = options.argv[0]
            if "/" in program:
                found = os.path.join(cwd, program)
                ok = os.path.isfile(found) and os.stat(found).st_mode & 0o111
            else:
                ok = shutil.which(program, path=env.get("PATH", LOGIN_PATH)) is not None
            if not ok:
                raise errors.InvalidArgument(
                    f"{program!r} is not an executable program in the workspace (searched {env.get('PATH', '')})"
                    if "/" not in program else f"{program!r} is not an executable file in the workspace", "argv")
            self.cgroups.create(workspace_id)
            joins = " && ".join(f"echo $$ > {shlex.quote(str(p))}" for p in self.cgroups.procs_files(workspace_id))
            root_script = (f"{joins} || exit 125; exec {self.enter_prefix(workspace_id)}setpriv --reuid={pw.pw_uid} "
                           f"--regid={pw.pw_gid} --init-groups -- /bin/sh -c {shlex.quote(DECODE)} vws-user {len(env)} \"$@\"")
            root_env = {"PATH": ROOT_PATH}
            root_env.update({f"VWSENV_{i}": f"{k}={v}" for i, (k, v) in enumerate(env.items())})
            proc = subprocess.Popen(["/bin/sh", "-c", root_script, "vws-exec", *options.argv], stdin=stdin,
                                    stdout=stdout, stderr=stderr, cwd=f"/proc/self/fd/{cwd_fd}", env=root_env,
                                    start_new_session=True, close_fds=True)
        finally:
            os.close(cwd_fd)
        with self._children_lock:
            self._children.setdefault(workspace_id, weakref.WeakSet()).add(proc)
        return proc

    def kill_all(self, workspace_id: str, pw: pwd.struct_passwd | None) -> None:
        """Every process of the workspace: what this process started (it may not have joined the
        cgroup or dropped to the account yet), its cgroup, then anything else running as the account."""
        with self._children_lock:
            children = list(self._children.pop(workspace_id, ()))
        for proc in children:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.cgroups.kill_all(workspace_id)
        if pw is not None:
            kill_uid(pw.pw_uid)
        for proc in children:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                log.warning("process %d of %s did not exit after SIGKILL", proc.pid, workspace_id)
