"""One cgroup per workspace, for freezing (pause) and for finding and killing every process
(stop, destroy). Works on cgroup v1 (one hierarchy per controller, <root>/<controller>/...) and
v2 (one unified hierarchy, detected by <root>/cgroup.controllers).

Layout: v1 <root>/freezer/vws/<manager_id>/<workspace_id>, v2 <root>/vws/<manager_id>/<workspace_id>.
No controller is enabled in v2's cgroup.subtree_control, so the "no internal processes" rule
never applies; limits come later."""
from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from vws.common import errors

V1_CONTROLLERS = ("freezer",)


def _alive(pid: int) -> bool:
    """Whether pid is a process that still runs (a zombie has finished)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the parenthesised command, which may itself contain ')'.
    return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X", b"")


class CgroupDriver:
    def __init__(self, root: Path | str, manager_id: str, timeout: float = 5.0, poll: float = 0.002):
        self.root = Path(root)
        self.manager_id = manager_id
        self.timeout = timeout
        self.poll = poll
        self.version = 2 if (self.root / "cgroup.controllers").exists() else 1
        if self.version == 1:
            missing = [c for c in V1_CONTROLLERS if not (self.root / c).is_dir()]
            if missing:
                raise errors.FailedPrecondition(
                    f"cgroup v1 controller(s) {', '.join(missing)} not mounted under {self.root}; mount "
                    f"them (mount -t cgroup -o freezer cgroup {self.root}/freezer) or point cgroup_root "
                    "at a cgroup v2 mount")

    # ------------------------------------------------------------------ paths
    def paths(self, wid: str) -> list[Path]:
        if self.version == 2:
            return [self.root / "vws" / self.manager_id / wid]
        return [self.root / c / "vws" / self.manager_id / wid for c in V1_CONTROLLERS]

    @property
    def _freezer(self) -> Path:
        return self.root / "freezer" if self.version == 1 else self.root

    def _freezer_dir(self, wid: str) -> Path:
        return self._freezer / "vws" / self.manager_id / wid

    def procs_files(self, wid: str) -> list[Path]:
        """The files a process writes its pid to to join the workspace's cgroup(s)."""
        return [p / "cgroup.procs" for p in self.paths(wid)]

    # seams for the unit tests
    def _read(self, path: Path) -> str:
        with open(path) as f:
            return f.read()

    def _write(self, path: Path, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    # --------------------------------------------------------------- membership
    def create(self, wid: str) -> None:
        for p in self.paths(wid):
            p.mkdir(parents=True, exist_ok=True)

    def exists(self, wid: str) -> bool:
        return all(p.is_dir() for p in self.paths(wid))

    def add(self, wid: str, pid: int) -> None:
        for f in self.procs_files(wid):
            self._write(f, str(pid))

    def pids(self, wid: str) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files(wid):
            try:
                found.update(int(x) for x in self._read(f).split())
            except FileNotFoundError:
                pass
        return found

    # ------------------------------------------------------------------ freezer
    def _wait(self, what: str, done, timeout: float | None = None) -> None:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise errors.BackendError(f"cgroup {what} did not complete within {timeout:.1f}s")
            time.sleep(self.poll)

    def is_frozen(self, wid: str) -> bool:
        d = self._freezer_dir(wid)
        try:
            if self.version == 1:
                return self._read(d / "freezer.state").strip() == "FROZEN"
            return "frozen 1" in self._read(d / "cgroup.events").splitlines()
        except FileNotFoundError:
            return False

    def freeze(self, wid: str, timeout: float | None = None) -> None:
        d = self._freezer_dir(wid)
        if self.version == 1:
            self._write(d / "freezer.state", "FROZEN")
        else:
            self._write(d / "cgroup.freeze", "1")
        try:
            self._wait(f"freeze of {d}", lambda: self.is_frozen(wid), timeout)
        except errors.BackendError:
            self.thaw(wid)  # a half-frozen workspace is worse than a running one
            raise

    def thaw(self, wid: str) -> None:
        d = self._freezer_dir(wid)
        try:
            if self.version == 1:
                self._write(d / "freezer.state", "THAWED")
            else:
                self._write(d / "cgroup.freeze", "0")
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ killing
    def kill_all(self, wid: str) -> None:
        """SIGKILLs every process in the cgroup and waits until none runs. Frozen first so a
        fork bomb cannot outrun it, thawed after so the signals are delivered (v1 does not
        deliver SIGKILL to a frozen task). v2's cgroup.kill does all of it in the kernel."""
        d = self._freezer_dir(wid)
        if not d.is_dir():
            return
        deadline = time.monotonic() + self.timeout
        while True:
            live = [p for p in self.pids(wid) if _alive(p)]
            if not live:
                return
            if time.monotonic() > deadline:
                raise errors.BackendError(f"processes {sorted(live)[:10]} in {d} survived SIGKILL for "
                                          f"{self.timeout:.1f}s")
            if self.version == 2 and (d / "cgroup.kill").exists():
                self._write(d / "cgroup.kill", "1")
            else:
                try:
                    self.freeze(wid, timeout=min(self.timeout, 0.2))
                except errors.BackendError:
                    pass  # kill what can be killed anyway
                for pid in self.pids(wid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.thaw(wid)
            time.sleep(self.poll)

    def remove(self, wid: str, timeout: float | None = None) -> None:
        """Removes the workspace's cgroup(s). Idempotent. Kill its processes first."""
        for p in self.paths(wid):
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while True:
                try:
                    p.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # A fake tree in the tests holds plain files: remove them like the kernel would.
                    if exc.errno == errno.ENOTEMPTY and not self._is_cgroupfs(p):
                        for child in p.iterdir():
                            if child.is_file():
                                child.unlink()
                        continue
                    if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                        raise errors.BackendError(f"cannot remove cgroup {p}: {exc}") from exc
                    time.sleep(self.poll)

    def remove_manager_dirs(self) -> None:
        """Best effort: the manager's own level, once it holds no workspace."""
        tops = [self.root / "vws" / self.manager_id] if self.version == 2 else \
            [self.root / c / "vws" / self.manager_id for c in V1_CONTROLLERS]
        for p in tops:
            try:
                p.rmdir()
            except OSError:
                pass

    @staticmethod
    def _is_cgroupfs(p: Path) -> bool:
        try:
            fs = os.statvfs(p)
        except OSError:
            return False
        # cgroupfs reports no blocks at all; a directory on a real disk or tmpfs for tests does.
        return fs.f_blocks == 0
