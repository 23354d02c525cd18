"""Programs in a workspace: started as its account inside its cgroups (and, for a sandbox, its
namespaces), and all killed at stop."""
from __future__ import annotations

import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import threading
import weakref
from typing import Callable

from ....common import errors
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
            if not ENV_NAME.match(key) or key.startswith(("VWSENV_", "__vws_")):
                raise errors.InvalidArgument(
                    f"{key!r} cannot be passed: variable names are letters, digits and '_', not starting "
                    "with a digit (and not VWSENV_* or __vws_*)", f"environment[{key}]")
            if "\0" in value:
                raise errors.InvalidArgument("contains a NUL character", f"environment[{key}]")
            env[key] = value
        cwd = os.path.join(pw.pw_dir, options.working_directory) if options.working_directory else pw.pw_dir
        if not os.path.isdir(cwd):
            raise errors.InvalidArgument(f"{cwd} is not a directory in the workspace", "working_directory")
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
                                stdout=stdout, stderr=stderr, cwd=cwd, env=root_env, start_new_session=True,
                                close_fds=True)
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
