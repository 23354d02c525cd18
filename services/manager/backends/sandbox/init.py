"""A sandbox's init: `bwrap` (pid 1 inside, reaping the orphans of every Exec) running `sleep
infinity`, in its own session so that it outlives a restart of the manager. Its root is a
read-only tmpfs holding read-only binds of the host's /usr and /etc (and the merged-/usr links
/bin, /lib...), a fresh /proc and /dev, private writable /tmp and /dev/shm, and the workspace's
home, the only part of the host that is writable."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

from ....common import errors, host
from ..account.users import ROOT_PATH
from .state import SandboxState

READY_TIMEOUT = 10.0
SYSTEM_BINDS = ("/usr", "/etc")
MERGED_USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# pid 1 of the sandbox is bwrap itself (it reaps the orphans of every Exec); this is its only child.
# It says it runs (every mount is in place) on its standard output, a pipe, then waits forever.
INIT_SCRIPT = "printf 1; exec >/dev/null; exec sleep infinity"


def system_binds() -> list[str]:
    """bwrap arguments for the host's system directories, read-only."""
    args: list[str] = []
    for d in SYSTEM_BINDS:
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for d in MERGED_USR_LINKS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


def bwrap_argv(st: SandboxState, home: str, info_fd: int, binds: list[str]) -> list[str]:
    return ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--unshare-cgroup-try", *binds,
            "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm",
            "--dir", "/var", "--symlink", "../tmp", "/var/tmp",
            *_parents(home), "--bind", home, home, "--hostname", st.workspace_id, "--remount-ro", "/",
            "--cap-drop", "ALL", "--info-fd", str(info_fd), "--chdir", "/",
            "--", "/bin/sh", "-c", INIT_SCRIPT]


def _parents(home: str) -> list[str]:
    """The home's parents as directories anyone may enter and list (they hold only the home)."""
    args: list[str] = []
    for parent in reversed(Path(home).parents[:-1]):
        args += ["--perms", "0755", "--dir", str(parent)]
    return args


def start(st: SandboxState, home: str, log_path: Path, binds: list[str]) -> tuple[subprocess.Popen, int]:
    """(the outer bwrap process, the init's pid) once every mount is in place; BackendError,
    with bwrap's output, when it does not come up within READY_TIMEOUT."""
    info_r, info_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(bwrap_argv(st, home, info_w, binds), pass_fds=(info_w,),
                                    stdin=subprocess.DEVNULL, stdout=ready_w, stderr=log_file,
                                    env={"PATH": ROOT_PATH}, start_new_session=True, cwd="/")
        os.close(info_w)
        os.close(ready_w)
        info_w = ready_w = -1
        info = _read_until_eof(info_r)
        ready = _read_one(ready_r)
    finally:
        for fd in (info_r, ready_r, info_w, ready_w):
            if fd >= 0:
                os.close(fd)
    pid = 0
    try:
        pid = int(json.loads(info)["child-pid"]) if info else 0
    except (ValueError, KeyError):
        pass
    if not pid or ready != b"1":
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        text = log_path.read_text(errors="replace").strip()
        raise errors.BackendError(f"bwrap did not start the sandbox of {st.workspace_id} "
                                  f"(status {proc.returncode}): {text[-2000:]}")
    return proc, pid


def _read_until_eof(fd: int) -> bytes:
    data, deadline = b"", time.monotonic() + READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def _read_one(fd: int) -> bytes:
    if not select.select([fd], [], [], READY_TIMEOUT)[0]:
        return b""
    return os.read(fd, 1)


def kill(st: SandboxState) -> None:
    """Kills the init, if it runs (the kernel then kills everything in its PID namespace), and
    waits until it is gone."""
    pid = st.running_pid()
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while host.alive(pid) and host.start_time(pid) == st.start_time:
        if time.monotonic() > deadline:
            raise errors.BackendError(f"sandbox init {pid} of {st.workspace_id} survived SIGKILL for 5s")
        time.sleep(0.001)
