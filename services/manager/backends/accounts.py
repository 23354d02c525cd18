"""UNIX_ACCOUNT workspaces: one Unix account per workspace. AccountBackend holds what both
plug-ins share (staging, setup, start/stop/pause/resume, exec, scrubbing an account clean);
DynamicAccounts makes an account per workspace and deletes it at destroy. The pool variant is
in pool.py."""
from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import weakref
import time
from pathlib import Path

from ...common import errors, host, model, units
from .base import (
    Backend, BackendSettings, Counters, ExecOptions, HostHandle, Package, SetupFailed, host_capacity)
from .cgroups import CPU_PERIOD_US, CgroupDriver
from .disk import DiskImages, image_size

log = logging.getLogger("vws.manager.backends")

ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_-]*$")
MAX_ACCOUNT_NAME = 32
TYPICAL_WORKSPACE_ID = 12  # names.new_workspace_id(): "w" + 11
LOGIN_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"  # Debian's ENV_PATH
ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCRATCH_DIRS = (Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"))
CRONTABS = Path("/var/spool/cron/crontabs")
MAIL_SPOOL = Path("/var/mail")
SETUP_TAIL_LINES = 20
SETUP_TAIL_CHARS = 4000

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


def getpw(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def supplementary_groups(name: str) -> list[str]:
    """The groups an account belongs to besides its own (/etc/group's member lists)."""
    return sorted(g.gr_name for g in grp.getgrall() if name in g.gr_mem)


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


def clean_env(pw: pwd.struct_passwd) -> dict[str, str]:
    return {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name,
            "SHELL": pw.pw_shell or "/bin/sh", "PATH": LOGIN_PATH, "LANG": "C.UTF-8"}


# Runs as root with a clean environment: joins the workspace's cgroup(s) *before* anything of
# the user's runs, then drops to the account with setpriv. A preexec_fn would do the same in one
# process, but it runs Python between fork and exec in a multi-threaded server (gRPC threads),
# which can deadlock on a lock another thread held at fork; this path runs no Python in the child
# (subprocess's fork/exec is C). The user's variables travel encoded as VWSENV_<i>=NAME=value,
# inert to the root shell and setpriv (LD_PRELOAD and friends must never reach a root process),
# and are decoded by a shell already running as the user, which then execs the program.
_DECODE = (r'__vws_n=$1; shift; __vws_i=0; '
           r'while [ "$__vws_i" -lt "$__vws_n" ]; do '
           r'eval "__vws_kv=\$VWSENV_$__vws_i; unset VWSENV_$__vws_i"; export "$__vws_kv" || exit 125; '
           r'__vws_i=$((__vws_i+1)); done; unset __vws_n __vws_i __vws_kv; exec "$@"')


class AccountBackend(Backend):
    kinds = frozenset({model.Kind.UNIX_ACCOUNT})
    shapes_network = False  # its workspaces use the host's network: no bandwidth can be enforced

    def __init__(self, settings: BackendSettings, cgroups: CgroupDriver | None = None):
        self.settings = settings
        self.manager_id = settings.manager_id
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        self.cgroups = cgroups or CgroupDriver(settings.cgroup_root, settings.manager_id)
        self._capacity: model.Capacity | None = None
        # Programs this process started, per workspace: reaped after a kill so that no zombie keeps
        # a cgroup busy or an account "in use" (the Exec servicer reaps them too, a moment later).
        self._children: dict[str, weakref.WeakSet] = {}
        self._children_lock = threading.Lock()
        self._stale_cgroups: set[str] = set()
        # Each plug-in its own directory of images: several share one state_dir (accounts, sandboxes).
        self.disks = DiskImages(settings.state_dir / "disks" / self.name, settings.disk_stock_bytes,
                                settings.disk_stock)
        self._next_sweep = 0.0

    # -------------------------------------------------------------- subclass hooks
    def _workspaces(self) -> int:
        raise NotImplementedError

    def capacity(self) -> model.Capacity:
        """The host's figures, less a reserve of memory for the host itself when not configured."""
        if self._capacity is None:
            cap = host_capacity(self.settings, self._workspaces())
            if not self.settings.memory_bytes and cap.memory_bytes:
                reserve = self.settings.memory_reserve_bytes
                if reserve < 0:
                    reserve = min(max(cap.memory_bytes // 16, 256 * 1024**2), 2 * 1024**3)
                cap.memory_bytes = max(cap.memory_bytes - reserve, 0)
            self._capacity = cap
        return self._capacity

    # --------------------------------------------------------------- enforcement
    def _check_admission(self, spec: model.WorkspaceSpec) -> None:
        """Refuses (ResourceExhausted, naming each resource) a spec this host cannot enforce as
        asked, before anything is made: a limit is never accepted and silently weakened. A Unix
        group the policy names that the host lacks is FailedPrecondition, also before anything."""
        group = spec.software.unix_group
        if group:
            try:
                grp.getgrnam(group)
            except KeyError:
                raise errors.FailedPrecondition(
                    f"workspace.spec.software.unix_group: the site's policy puts this workspace's account in Unix "
                    f"group {group!r}, which does not exist on manager {self.manager_id}; create it there (groupadd "
                    f"{group}) or change the policy's customise.unix_group") from None
        r = spec.resources
        cap = self.capacity()
        v: list[tuple[str, str]] = []
        size = units.format_size
        f = "workspace.spec.resources."
        asked = [n for n, val in (("memory", r.memory_bytes), ("cpu", r.cpu_millis), ("pids", r.max_processes)) if val]
        for n in self.cgroups.missing(asked):
            field = {"memory": "memory_bytes", "cpu": "cpu_millis", "pids": "max_processes"}[n]
            v.append((f + field, f"this host has no cgroup {n} controller (cgroup v{self.cgroups.version} at "
                      f"{self.cgroups.root}) to enforce it"))
        if r.network_bits_per_second and not self.shapes_network:
            v.append((f + "network_bits_per_second", "network: this kind of workspace shares the host's network, "
                      "so no bandwidth can be enforced for it; ask for none, or use kind sandbox"))
        if cap.memory_bytes and r.memory_bytes > cap.memory_bytes:
            v.append((f + "memory_bytes", f"memory: {size(r.memory_bytes)} wanted, this host offers at most "
                      f"{size(cap.memory_bytes)} to one workspace"))
        cores = (os.cpu_count() or 1) * 1000
        if r.cpu_millis > min(cap.cpu_millis or cores, cores):
            v.append((f + "cpu_millis", f"cpu: {r.cpu_millis}m wanted, this host has {min(cap.cpu_millis or cores, cores)}m"))
        elif 0 < r.cpu_millis * CPU_PERIOD_US // 1000 < 1000:
            v.append((f + "cpu_millis", f"cpu: {r.cpu_millis}m is under the smallest quota the kernel enforces (10m)"))
        if r.disk_bytes:
            if not shutil.which("mkfs.ext4", path=ROOT_PATH):
                v.append((f + "disk_bytes", "this host cannot make disk images (no mkfs.ext4; install e2fsprogs)"))
            else:
                st = os.statvfs(self.disks.dir)
                free = st.f_bavail * st.f_frsize
                need = image_size(r.disk_bytes)[0]
                ready = r.disk_bytes == self.disks.stock_bytes and self.disks.ready() > 0
                if need > free and not ready:
                    v.append((f + "disk_bytes", f"disk: {size(r.disk_bytes)} wanted, {size(free)} free for disk "
                              f"images in {self.disks.dir}"))
        if v:
            raise errors.ResourceExhausted("this host cannot enforce the limits asked: " + "; ".join(d for _, d in v), v)

    def _apply_limits(self, workspace_id: str, spec: model.WorkspaceSpec) -> None:
        """Makes the workspace's cgroup(s) and writes its memory, CPU and process limits."""
        self.cgroups.create(workspace_id)
        r = spec.resources
        self.cgroups.set_limits(workspace_id, memory_bytes=r.memory_bytes, cpu_millis=r.cpu_millis,
                                max_processes=r.max_processes)

    def _mount_disk(self, pw: pwd.struct_passwd, workspace_id: str, spec: model.WorkspaceSpec,
                    home: Path | None = None) -> None:
        """Gives the workspace a filesystem of its own of at least spec's disk size on its home
        (or `home`), owned by the account, holding a copy of the skeleton. Nothing when 0."""
        if spec.resources.disk_bytes:
            self.disks.attach(workspace_id, spec.resources.disk_bytes, home or Path(pw.pw_dir), pw.pw_uid,
                              pw.pw_gid, self.settings.skeleton_dir)

    def _unmount_disk(self, workspace_id: str) -> None:
        """Unmounts and deletes the workspace's filesystem, if any. Idempotent; kill first."""
        self.disks.release(workspace_id)

    def sweep_disks(self) -> list[str]:
        """Removes disk images (and their mounts) no workspace of this backend owns: what a crash
        between making and recording one left behind."""
        images = self.disks.images()  # listed before the owners: an image is made after its owner
        if not images:
            return []
        owned = set(self.inventory().values())
        return self.disks.sweep(owned)

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        done = []
        if not self.cgroups.exists(handle.workspace_id):
            self._apply_limits(handle.workspace_id, spec)
            done.append("limits")
        key = self._disk_key(handle)
        if spec.resources.disk_bytes and self.disks.mount_point(key) is None:
            pw = getpw(handle.host_identity)
            if pw is None or not self.disks.image(key).exists():
                raise errors.BackendError(f"its filesystem (image {self.disks.image(key)}) is gone")
            self.disks.remount(key, Path(pw.pw_dir))
            done.append("filesystem")
        return done

    def _disk_key(self, handle: HostHandle) -> str:
        """Whose name the workspace's disk image bears: the workspace's (the pool: its account's)."""
        return handle.workspace_id

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        lim = self.cgroups.limits(handle.workspace_id)
        disk = self.disks.usage(self._disk_key(handle))
        if lim is None and disk is None:
            return None
        e = model.Enforcement(mechanism=f"cgroup v{self.cgroups.version}", cgroup=self.cgroups.group(handle.workspace_id))
        if lim is not None:
            e.memory_limit_bytes, e.cpu_quota_micros = lim.memory_bytes, lim.cpu_quota_us
            e.cpu_period_micros, e.max_processes = lim.cpu_period_us, lim.max_processes
        if disk is not None:
            e.disk_bytes, _, e.disk_mount = disk
        return e

    def sample(self, handle: HostHandle) -> Counters | None:
        c = self.cgroups.counters(handle.workspace_id)
        disk = self.disks.usage(self._disk_key(handle))
        if c is None:
            if disk is None:
                return None
            c = Counters(time=time.time())
        if disk is not None:
            c.disk_used = disk[1]
        return c

    def _account(self, handle: HostHandle) -> pwd.struct_passwd:
        """The handle's account, checked to be this manager's and this workspace's."""
        raise NotImplementedError

    # ------------------------------------------------------------------ locking
    @staticmethod
    def lock(name: str) -> None:
        if not is_locked(name):
            run_account_tool(["usermod", "--expiredate", "1", name])

    @staticmethod
    def unlock(name: str) -> None:
        if account_expiry(name) != "":
            run_account_tool(["usermod", "--expiredate", "", name])

    # ------------------------------------------------------------------ staging
    def _prepare_or_undo(self, account: str, workspace_id: str, spec: model.WorkspaceSpec,
                         private_home: bool = False) -> HostHandle:
        """_prepare the workspace on its account; on any failure destroy what realise made and
        raise the failure."""
        handle = HostHandle(workspace_id, account)
        try:
            pw = pwd.getpwnam(account)
            if private_home:
                os.chmod(pw.pw_dir, 0o700)  # other workspaces' accounts on this host must not read it
            self._prepare(pw, workspace_id, spec)
        except BaseException:
            try:
                self.destroy(handle)
            except Exception:  # noqa: BLE001 - the original failure is what the caller needs
                log.exception("undoing the failed realise of %s", workspace_id)
            raise
        return handle

    def _prepare(self, pw: pwd.struct_passwd, workspace_id: str, spec: model.WorkspaceSpec) -> None:
        """Stages files and environment and runs the setup script. Raises on any failure;
        the caller undoes."""
        group = spec.software.unix_group
        if group and pw.pw_name not in grp.getgrnam(group).gr_mem:
            run_account_tool(["usermod", "--append", "--groups", group, pw.pw_name])
        self._apply_limits(workspace_id, spec)
        self._mount_disk(pw, workspace_id, spec)
        home = Path(pw.pw_dir)
        for i, f in enumerate(spec.software.files):
            self._stage(pw, home, f, f"workspace.spec.software.files[{i}].path")
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

    def _stage(self, pw: pwd.struct_passwd, home: Path, f: model.StagedFile, field: str) -> None:
        rel = os.path.normpath(f.path) if f.path else ""
        if os.path.isabs(rel):
            rel = rel[len(str(home)) + 1:] if rel.startswith(str(home) + "/") else "../"
        parts = tuple(p for p in Path(rel).parts if p not in ("", "."))
        if not parts or ".." in parts:
            raise errors.InvalidArgument(
                f"{f.path!r} is not inside the workspace's home; give a path relative to the home "
                "directory, e.g. 'bin/run.sh'", field)
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
        d = self._mkdirs(pw, home, (".vws",))
        text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if ENV_NAME.match(k))
        self._stage(pw, home, model.StagedFile(str(d.relative_to(home) / "environment.sh"),
                                               text.encode(), 0o644), "workspace.spec.software.environment")
        profile = home / ".profile"
        hook = b'\n[ -r "$HOME/.vws/environment.sh" ] && . "$HOME/.vws/environment.sh"\n'
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
        self._stage(pw, home, model.StagedFile(name, script.encode(), 0o700), "workspace.spec.software.setup_script")
        path = str(home / name)
        argv = [path] if script.startswith("#!") else ["/bin/bash", path]
        # Output goes to a file, not a pipe: what the script leaves in the background would hold a
        # pipe open and the wait would last as long as it does.
        with tempfile.TemporaryFile(dir=self.settings.state_dir) as log_file:
            try:
                proc = self._popen(pw, workspace_id, ExecOptions(argv, dict(spec.software.environment), ""),
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
                timed_out = False
                try:
                    proc.wait(timeout=self.settings.setup_timeout)
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
            if timed_out:
                text += f"\n[vws: killed after {self.settings.setup_timeout:.0f}s]"
            tail = "\n".join(text.splitlines()[-SETUP_TAIL_LINES:])[-SETUP_TAIL_CHARS:]
            raise SetupFailed(status, tail)

    # ----------------------------------------------------------------- lifecycle
    def start(self, handle: HostHandle) -> None:
        pw = self._account(handle)
        self.cgroups.create(handle.workspace_id)
        self.cgroups.thaw(handle.workspace_id)
        self.unlock(pw.pw_name)

    def stop(self, handle: HostHandle, force: bool = False) -> None:
        pw = self._account(handle)
        self._kill_all(handle.workspace_id, pw)
        self.lock(pw.pw_name)

    def pause(self, handle: HostHandle) -> None:
        pw = self._account(handle)
        self.cgroups.create(handle.workspace_id)
        # Processes the account started outside vws (an ssh login, a cron job) are pulled in first.
        inside = self.cgroups.pids(handle.workspace_id)
        for pid in uid_pids(pw.pw_uid):
            if pid not in inside:
                try:
                    self.cgroups.add(handle.workspace_id, pid)
                except (ProcessLookupError, OSError):
                    pass  # it exited meanwhile
        self.cgroups.freeze(handle.workspace_id)

    def resume(self, handle: HostHandle) -> None:
        self._account(handle)
        self.cgroups.thaw(handle.workspace_id)

    # ----------------------------------------------------------------- migration
    # The home moves as one tar archive (sparse files stay sparse, owners by number are
    # remapped to the new account on arrival); running processes do not move: they stay
    # frozen while the archive is made, and start afresh on the destination.
    HOME_ARCHIVE = "home.tar"

    def pack(self, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir: Path) -> Package:
        pw = self._account(handle)
        if state is model.State.RUNNING:
            self.pause(handle)  # a consistent archive: nothing writes while it is made
        archive = Path(workdir) / self.HOME_ARCHIVE
        try:
            r = subprocess.run(["tar", "--create", "--sparse", "--numeric-owner", "--xattrs", "--acls",
                                "--file", str(archive), "--directory", pw.pw_dir, "."],
                               capture_output=True, text=True)
            if r.returncode not in (0, 1):  # 1: a file changed while read (only outside the freezer)
                raise errors.BackendError(f"the home of {pw.pw_name} could not be archived: "
                                          f"{r.stderr.strip()[-300:]}")
        except BaseException:
            archive.unlink(missing_ok=True)
            self.revert_pack(handle, Package({}), state)
            raise
        return Package({"home": archive}, {"account": pw.pw_name})

    def revert_pack(self, handle: HostHandle, package: Package, state: model.State) -> None:
        if state is model.State.RUNNING:
            self.resume(handle)
        for path in package.files.values():
            Path(path).unlink(missing_ok=True)

    def unpack(self, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State
               ) -> HostHandle:
        # The set-up script ran and the staged files are in the archive: neither again.
        bare = dataclasses.replace(spec, software=dataclasses.replace(spec.software, setup_script="", files=[]))
        handle = self.realise(workspace_id, bare)
        try:
            pw = self._account(handle)
            r = subprocess.run(["tar", "--extract", "--sparse", "--xattrs", "--acls", "--no-same-owner",
                                "--file", str(package.files["home"]), "--directory", pw.pw_dir],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise errors.BackendError(f"the home archive could not be unpacked into {pw.pw_dir}: "
                                          f"{r.stderr.strip()[-300:]}")
            subprocess.run(["chown", "-R", "--no-dereference", f"{pw.pw_uid}:{pw.pw_gid}", pw.pw_dir], check=True,
                           capture_output=True)
            if state in (model.State.RUNNING, model.State.PAUSED):
                self.start(handle)
            if state is model.State.PAUSED:
                self.pause(handle)
        except BaseException:
            self.destroy(handle)
            raise
        return handle

    # ---------------------------------------------------------------------- exec
    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        pw = self._account(handle)
        return self._popen(pw, handle.workspace_id, options, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)

    def _popen(self, pw: pwd.struct_passwd, workspace_id: str, options: ExecOptions, *,
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
        root_script = (f"{joins} || exit 125; exec {self._enter_prefix(workspace_id)}setpriv --reuid={pw.pw_uid} "
                       f"--regid={pw.pw_gid} --init-groups -- /bin/sh -c {shlex.quote(_DECODE)} vws-user {len(env)} \"$@\"")
        root_env = {"PATH": ROOT_PATH}
        root_env.update({f"VWSENV_{i}": f"{k}={v}" for i, (k, v) in enumerate(env.items())})
        proc = subprocess.Popen(["/bin/sh", "-c", root_script, "vws-exec", *options.argv], stdin=stdin,
                                stdout=stdout, stderr=stderr, cwd=cwd, env=root_env, start_new_session=True,
                                close_fds=True)
        with self._children_lock:
            self._children.setdefault(workspace_id, weakref.WeakSet()).add(proc)
        return proc

    def _enter_prefix(self, workspace_id: str) -> str:
        """Shell words run as root, already in the workspace's cgroups, between joining them and
        setpriv (a sandbox backend enters its namespaces here; the working directory is $PWD).
        Empty, or ending with a space."""
        return ""

    def _kill_all(self, workspace_id: str, pw: pwd.struct_passwd | None) -> None:
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

    def _remove_cgroup(self, workspace_id: str) -> None:
        try:
            self.cgroups.remove(workspace_id, timeout=1.0)
            self._stale_cgroups.discard(workspace_id)
        except errors.BackendError as exc:
            # A killed process not yet reaped by its parent keeps it busy: maintain() retries.
            log.warning("%s; retrying in the background", exc)
            self._stale_cgroups.add(workspace_id)

    def close(self) -> None:
        self.maintain_cgroups()
        self.cgroups.remove_manager_dirs()
        self.cgroups.close()
        self.disks.close()

    def maintain(self) -> None:
        self.maintain_cgroups()
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + 60
            self.sweep_disks()

    def maintain_cgroups(self) -> None:
        for wid in list(self._stale_cgroups):
            try:
                self.cgroups.remove(wid, timeout=0.0)
                self._stale_cgroups.discard(wid)
            except errors.BackendError:
                pass

    # ----------------------------------------------------------------- scrubbing
    def _scrub(self, pw: pwd.struct_passwd | None, workspace_id: str) -> None:
        """Kills every process, unmounts the workspace's own filesystem and removes everything
        the account has outside its home."""
        self._kill_all(workspace_id, pw)
        self._unmount_disk(workspace_id)
        if pw is not None:
            if (CRONTABS / pw.pw_name).exists():
                if shutil.which("crontab", path=ROOT_PATH):
                    subprocess.run(["crontab", "-r", "-u", pw.pw_name], capture_output=True, env={"PATH": ROOT_PATH})
                (CRONTABS / pw.pw_name).unlink(missing_ok=True)
            for top in SCRATCH_DIRS:
                _remove_owned(top, pw.pw_uid)
            _remove_ipc(pw.pw_uid)
            (MAIL_SPOOL / pw.pw_name).unlink(missing_ok=True)
        self._remove_cgroup(workspace_id)


class DynamicAccounts(AccountBackend):
    """An account per workspace: <prefix><workspace id>, made at realise, deleted at destroy.
    The GECOS field "vws/<manager_id>/<workspace_id>" says whose it is (':' cannot appear there)."""
    name = "dynamic-accounts"

    def __init__(self, settings: BackendSettings, cgroups: CgroupDriver | None = None):
        validate_prefix(settings.account_prefix, "account_prefix", TYPICAL_WORKSPACE_ID)
        super().__init__(settings, cgroups)
        self.prefix = settings.account_prefix
        self._gecos_prefix = f"vws/{self.manager_id}/"

    def _workspaces(self) -> int:
        return self.settings.max_workspaces

    def account_name(self, workspace_id: str) -> str:
        name = self.prefix + workspace_id
        if len(name) > MAX_ACCOUNT_NAME:
            raise errors.InvalidArgument(
                f"account name {name!r} would be longer than {MAX_ACCOUNT_NAME} characters", "workspace.name")
        return name

    def _gecos(self, workspace_id: str) -> str:
        return self._gecos_prefix + workspace_id

    def _ours(self, pw: pwd.struct_passwd, workspace_id: str) -> bool:
        return pw.pw_gecos == self._gecos(workspace_id)

    def _account(self, handle: HostHandle) -> pwd.struct_passwd:
        pw = getpw(handle.host_identity)
        if pw is None:
            raise errors.FailedPrecondition(f"account {handle.host_identity} of {handle.workspace_id} is gone "
                                            "from the host")
        if not self._ours(pw, handle.workspace_id):
            raise errors.FailedPrecondition(f"account {handle.host_identity} does not belong to workspace "
                                            f"{handle.workspace_id} of manager {self.manager_id}")
        return pw

    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress=None) -> HostHandle:
        name = self.account_name(workspace_id)
        pw = getpw(name)
        if pw is not None:
            if self._ours(pw, workspace_id):
                return HostHandle(workspace_id, name)
            raise errors.FailedPrecondition(f"account {name} already exists on the host and is not "
                                            f"workspace {workspace_id}'s")
        self._check_admission(spec)
        run_account_tool(["useradd", "--create-home", "--skel", str(self.settings.skeleton_dir),
                          "--shell", "/bin/bash", "--comment", self._gecos(workspace_id),
                          "--expiredate", "1", "--user-group", name])
        return self._prepare_or_undo(name, workspace_id, spec, private_home=True)

    def destroy(self, handle: HostHandle) -> None:
        pw = getpw(handle.host_identity)
        if pw is not None and not self._ours(pw, handle.workspace_id):
            raise errors.FailedPrecondition(f"refusing to delete account {handle.host_identity}: it is not "
                                            f"workspace {handle.workspace_id}'s")
        self._scrub(pw, handle.workspace_id)
        if pw is not None:
            # 6: no such user (someone else removed it meanwhile); 12: home or mail spool not removable
            # --force: a killed process its parent has not reaped yet still counts as "in use"
            r = run_account_tool(["userdel", "--remove", "--force", handle.host_identity], ok=(0, 6, 12))
            if r.returncode == 12 and os.path.isdir(pw.pw_dir) and pw.pw_dir.startswith("/home/"):
                shutil.rmtree(pw.pw_dir, ignore_errors=True)

    def exists(self, handle: HostHandle) -> bool:
        pw = getpw(handle.host_identity)
        return pw is not None and self._ours(pw, handle.workspace_id)

    def inventory(self) -> dict[str, str]:
        return {pw.pw_name: pw.pw_gecos[len(self._gecos_prefix):] for pw in pwd.getpwall()
                if pw.pw_gecos.startswith(self._gecos_prefix)}

    def reclaim(self, host_identity: str) -> None:
        pw = getpw(host_identity)
        if pw is None:
            return
        if not pw.pw_gecos.startswith(self._gecos_prefix):
            raise errors.FailedPrecondition(f"refusing to reclaim account {host_identity}: manager "
                                            f"{self.manager_id} did not make it")
        self.destroy(HostHandle(pw.pw_gecos[len(self._gecos_prefix):], host_identity))
