"""Provisioning: puts a spec's software into a workspace's home (the staged files, the
environment its logins see) and runs its set-up script as the account."""
from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import shlex
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

from ....common import errors, model
from ..base import ExecOptions, SetupFailed, SetupTimedOut
from ..host.cgroups import CgroupDriver
from ..host.room import FULL, no_room
from .programs import ENV_NAME, Programs

SETUP_TAIL_LINES = 20
SETUP_TAIL_CHARS = 4000
# What stands in the way of a staged file: an entry of the skeleton (a directory, a symlink).
IN_THE_WAY = (errno.EISDIR, errno.ELOOP, errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG)


@contextlib.contextmanager
def host_refusals(home: Path, path: str, field: str):
    """Writing path into home: a full disk is RESOURCE_EXHAUSTED, an entry in the way the caller's
    INVALID_ARGUMENT naming field, not an OSError (INTERNAL)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            disk = "workspace.spec.resources.disk_bytes" if os.path.ismount(home) else ""
            raise no_room(errors.quote(path), home, disk) from None
        if exc.errno in IN_THE_WAY:
            raise errors.InvalidArgument(
                f"{errors.quote(path)} cannot be written in the workspace's home: {exc.strerror} (the site's skeleton "
                "has something there); stage it under another name", field) from None
        raise


class Provisioner:
    def __init__(self, programs: Programs, cgroups: CgroupDriver, scratch_dir: Path, setup_timeout: float):
        """scratch_dir: where the set-up script's output is kept while it runs."""
        self.programs = programs
        self.cgroups = cgroups
        self.scratch_dir = scratch_dir
        self.setup_timeout = setup_timeout

    def provision(self, pw: pwd.struct_passwd, workspace_id: str, spec: model.WorkspaceSpec) -> None:
        """Stages files and environment and runs the setup script. Raises on any failure;
        the caller undoes."""
        home = Path(pw.pw_dir)
        for i, f in enumerate(spec.software.files):
            self.stage(pw, home, f, f"workspace.spec.software.files[{i}].path")
        if spec.software.environment:
            self._write_environment(pw, home, spec.software.environment)
        if spec.software.setup_script:
            self._run_setup(pw, workspace_id, spec)

    @staticmethod
    def _mkdirs(pw: pwd.struct_passwd, home: Path, parts: tuple[str, ...], field: str = "") -> Path:
        d = home
        for part in parts:
            d = d / part
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                os.mkdir(d, 0o755)
                os.lchown(d, pw.pw_uid, pw.pw_gid)
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise errors.InvalidArgument(f"{d} exists and is not a directory", field)
        return d

    def stage(self, pw: pwd.struct_passwd, home: Path, f: model.StagedFile, field: str) -> None:
        rel = os.path.normpath(f.path) if f.path else ""
        if os.path.isabs(rel):
            rel = rel[len(str(home)) + 1:] if rel.startswith(str(home) + "/") else "../"
        parts = tuple(p for p in Path(rel).parts if p not in ("", "."))
        if not parts or ".." in parts:
            raise errors.InvalidArgument(
                f"{f.path!r} is not inside the workspace's home; give a path relative to the home "
                "directory, e.g. 'bin/run.sh'", field)
        with host_refusals(home, f.path, field):
            d = self._mkdirs(pw, home, parts[:-1], field)
            fd = os.open(d / parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.fchown(fd, pw.pw_uid, pw.pw_gid)
                os.fchmod(fd, f.mode & 0o777)
                view = memoryview(f.content)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def _write_environment(self, pw: pwd.struct_passwd, home: Path, env: dict[str, str]) -> None:
        """~/.vws/environment.sh (sourced by ~/.profile) so logins see the spec's environment."""
        field = "workspace.spec.software.environment"
        with host_refusals(home, ".vws", field):
            d = self._mkdirs(pw, home, (".vws",))
        text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if ENV_NAME.match(k))
        self.stage(pw, home, model.StagedFile(str(d.relative_to(home) / "environment.sh"),
                                              text.encode(), 0o644), field)
        profile = home / ".profile"
        hook = b'\n[ -r "$HOME/.vws/environment.sh" ] && . "$HOME/.vws/environment.sh"\n'
        with host_refusals(home, ".profile", field):
            fd = os.open(profile, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.fchown(fd, pw.pw_uid, pw.pw_gid)
                os.write(fd, hook)
            finally:
                os.close(fd)

    def _run_setup(self, pw: pwd.struct_passwd, workspace_id: str, spec: model.WorkspaceSpec) -> None:
        home = Path(pw.pw_dir)
        script = spec.software.setup_script
        name = f".vws-setup-{secrets.token_hex(4)}"
        self.stage(pw, home, model.StagedFile(name, script.encode(), 0o700), "workspace.spec.software.setup_script")
        path = str(home / name)
        argv = [path] if script.startswith("#!") else ["/bin/bash", path]
        # Output goes to a file, not a pipe: what the script leaves in the background would hold a
        # pipe open and the wait would last as long as it does.
        with tempfile.TemporaryFile(dir=self.scratch_dir) as log_file:
            try:
                proc = self.programs.start(pw, workspace_id, ExecOptions(argv, dict(spec.software.environment), ""),
                                           stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
                timed_out = False
                try:
                    proc.wait(timeout=self.setup_timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                status = proc.returncode
            finally:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            log_file.seek(max(0, os.fstat(log_file.fileno()).st_size - 64 * 1024))
            out = log_file.read()
        # A workspace that is READY runs nothing: what the script left in the background goes.
        self.cgroups.kill_all(workspace_id)
        if status != 0:
            text = out.decode("utf-8", "replace").rstrip()
            tail = "\n".join(text.splitlines()[-SETUP_TAIL_LINES:])[-SETUP_TAIL_CHARS:]
            raise SetupTimedOut(self.setup_timeout, tail) if timed_out else SetupFailed(status, tail)
