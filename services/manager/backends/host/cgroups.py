"""One cgroup per workspace: freezing (pause), finding and killing every process (stop,
destroy), and the workspace's limits (memory, CPU quota, process count) and counters. Works on
cgroup v1 (one hierarchy per controller, <root>/<controller>/...) and v2 (one unified
hierarchy, detected by <root>/cgroup.controllers).

Layout: v1 <root>/<controller>/vws/<manager_id>/<workspace_id> for each mounted controller of
V1_CONTROLLERS (freezer is required, the others are needed only by a workspace that asks for
their limit); v2 <root>/vws/<manager_id>/<workspace_id>, with memory, cpu and pids enabled in
cgroup.subtree_control of <root>, <root>/vws and <root>/vws/<manager_id> (which hold no
process, so the "no internal processes" rule never bites)."""
from __future__ import annotations

import dataclasses
import errno
import os
import resource
import signal
import threading
import time
from pathlib import Path

from ....common import errors, host
from ..base import Counters

V1_CONTROLLERS = ("freezer", "memory", "cpu", "cpuacct", "pids")
V2_CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
UNLIMITED_V1 = 1 << 62  # memory.limit_in_bytes reads back as PAGE_COUNTER_MAX pages: "no limit" above this

# resource -> (v1 controller, v2 controller)
# cgroup v1 can leave a freeze FREEZING for good when a task forks while it runs (here, 10 of
# 800 freezes of a loop that forks every 10 ms never finished); writing FROZEN again freezes the
# stragglers, as the v1 freezer leaves retrying to userspace. How often, while waiting:
FREEZE_RETRY_SECONDS = 0.05
NEEDS = {"memory": ("memory", "memory"), "cpu": ("cpu", "cpu"), "pids": ("pids", "pids")}


@dataclasses.dataclass
class Limits:
    """What one workspace's cgroup holds (0: no limit)."""
    memory_bytes: int = 0
    cpu_quota_us: int = 0
    cpu_period_us: int = 0
    max_processes: int = 0


_FIELD = {"memory": "memory_bytes", "cpu": "cpu_millis", "pids": "max_processes"}


class CgroupDriver:
    def __init__(self, root: Path | str, manager_id: str, timeout: float = 5.0, poll: float = 0.002):
        self.root = Path(root)
        self.manager_id = manager_id
        self.timeout = timeout
        self.poll = poll
        self.version = 2 if (self.root / "cgroup.controllers").exists() else 1
        self._v2_enabled = False
        self._files: dict[str, tuple[str, ...]] = {}
        self._fds: dict[str, int] = {}
        self._fd_lock = threading.Lock()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._fd_budget = min(8192, max(soft // 4, 0)) if soft != resource.RLIM_INFINITY else 8192
        if self.version == 1:
            if not (self.root / "freezer").is_dir():
                raise errors.FailedPrecondition(
                    f"cgroup v1 controller freezer not mounted under {self.root}; mount it (mount -t cgroup "
                    f"-o freezer cgroup {self.root}/freezer) or point cgroup_root at a cgroup v2 mount")
            # Controllers mounted together (cpu,cpuacct) share one directory: each is listed once.
            self.v1: dict[str, Path] = {}
            seen: dict[str, Path] = {}
            for c in V1_CONTROLLERS:
                d = self.root / c
                if d.is_dir():
                    real = os.path.realpath(d)
                    self.v1[c] = seen.setdefault(real, d)
            self._v1_dirs = list(dict.fromkeys(self.v1.values()))
        else:
            try:
                offered = set(self._read(self.root / "cgroup.controllers").split())
            except OSError:
                offered = set()
            self.v2 = [c for c in V2_CONTROLLERS if c in offered]

    # ------------------------------------------------------------------ paths
    def paths(self, wid: str) -> list[Path]:
        if self.version == 2:
            return [self.root / "vws" / self.manager_id / wid]
        return [d / "vws" / self.manager_id / wid for d in self._v1_dirs]

    def group(self, wid: str) -> str:
        """The workspace's cgroup as /proc/<pid>/cgroup names it."""
        return f"/vws/{self.manager_id}/{wid}"

    def _dir(self, controller: str, wid: str) -> Path | None:
        """The directory holding controller's files for wid; None when the controller is absent."""
        if self.version == 2:
            return self.root / "vws" / self.manager_id / wid if controller in self.v2 else None
        d = self.v1.get(controller)
        return None if d is None else d / "vws" / self.manager_id / wid

    def missing(self, resources: list[str]) -> list[str]:
        """Of "memory", "cpu", "pids": those whose controller this host does not offer."""
        out = []
        for r in resources:
            v1c, v2c = NEEDS[r]
            ok = (v2c in self.v2) if self.version == 2 else (v1c in self.v1)
            if not ok:
                out.append(r)
        return out

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
        if self.version == 2 and not self._v2_enabled:
            self._enable_v2()
        for p in self.paths(wid):
            p.mkdir(parents=True, exist_ok=True)

    def _enable_v2(self) -> None:
        """Enables the limit controllers down to the manager's level (the workspace groups are leaves)."""
        if not self.v2:
            self._v2_enabled = True
            return
        top = self.root / "vws" / self.manager_id
        top.mkdir(parents=True, exist_ok=True)
        text = " ".join(f"+{c}" for c in self.v2)
        for level in (self.root, self.root / "vws", top):
            try:
                self._write(level / "cgroup.subtree_control", text)
            except OSError as exc:
                raise errors.FailedPrecondition(
                    f"cannot enable the {', '.join(self.v2)} controller(s) in {level}/cgroup.subtree_control "
                    f"({exc.strerror or exc}); point cgroup_root at a cgroup the manager may delegate from "
                    "(one holding no process itself)") from exc
        self._v2_enabled = True

    # ------------------------------------------------------------------ limits
    def set_limits(self, wid: str, memory_bytes: int = 0, cpu_millis: int = 0, max_processes: int = 0) -> None:
        """Writes the workspace's limits (0: none) into its existing cgroup. A limit asked of a
        controller the host does not offer raises ResourceExhausted (check missing() first)."""
        asked = [r for r, v in (("memory", memory_bytes), ("cpu", cpu_millis), ("pids", max_processes)) if v]
        gone = self.missing(asked)
        if gone:
            raise errors.ResourceExhausted(
                f"this host's cgroups offer no {', '.join(gone)} controller to enforce the limit",
                [(f"workspace.spec.resources.{_FIELD[r]}", f"no {r} controller on this host") for r in gone])
        if self.version == 1:
            if memory_bytes:
                d = self._dir("memory", wid)
                # memsw (memory + swap) >= memory at all times: order the writes accordingly.
                memsw = d / "memory.memsw.limit_in_bytes"
                has_memsw = memsw.exists()
                current = self._read_int(d / "memory.limit_in_bytes")
                if has_memsw and current and memory_bytes > current:
                    self._write(memsw, str(memory_bytes))
                    self._write(d / "memory.limit_in_bytes", str(memory_bytes))
                else:
                    self._write(d / "memory.limit_in_bytes", str(memory_bytes))
                    if has_memsw:
                        self._write(memsw, str(memory_bytes))
            if cpu_millis:
                d = self._dir("cpu", wid)
                self._write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                self._write(d / "cpu.cfs_quota_us", str(cpu_millis * CPU_PERIOD_US // 1000))
            if max_processes:
                self._write(self._dir("pids", wid) / "pids.max", str(max_processes))
        else:
            d = self.paths(wid)[0]
            if memory_bytes:
                self._write(d / "memory.max", str(memory_bytes))
                swap = d / "memory.swap.max"
                if swap.exists() or not self._is_cgroupfs(d):
                    self._write(swap, "0")
            if cpu_millis:
                self._write(d / "cpu.max", f"{cpu_millis * CPU_PERIOD_US // 1000} {CPU_PERIOD_US}")
            if max_processes:
                self._write(d / "pids.max", str(max_processes))

    def limits(self, wid: str) -> Limits | None:
        """The limits in force, read back from the host; None when the cgroup does not exist."""
        if not self.paths(wid)[0].is_dir():
            return None
        out = Limits()
        if self.version == 1:
            d = self._dir("memory", wid)
            if d is not None:
                v = self._read_int(d / "memory.limit_in_bytes")
                out.memory_bytes = v if 0 < v < UNLIMITED_V1 else 0
            d = self._dir("cpu", wid)
            if d is not None:
                quota = self._read_int(d / "cpu.cfs_quota_us", -1)
                if quota > 0:
                    out.cpu_quota_us = quota
                    out.cpu_period_us = self._read_int(d / "cpu.cfs_period_us")
            d = self._dir("pids", wid)
            if d is not None:
                out.max_processes = self._read_int(d / "pids.max")
        else:
            d = self.paths(wid)[0]
            out.memory_bytes = self._read_int(d / "memory.max")
            parts = self._read_text(d / "cpu.max").split()
            if len(parts) == 2 and parts[0] != "max":
                out.cpu_quota_us, out.cpu_period_us = int(parts[0]), int(parts[1])
            out.max_processes = self._read_int(d / "pids.max")
        return out

    def _counter_files(self, wid: str) -> tuple[str, ...]:
        """The files counters() reads, as plain strings, made once per workspace: sampling every
        workspace every few seconds must stay cheap (bench/test_sampling.py)."""
        files = self._files.get(wid)
        if files is None:
            def at(controller: str, name: str) -> str:
                d = self._dir(controller, wid)
                return "" if d is None else str(d / name)
            if self.version == 1:
                files = (at("cpuacct", "cpuacct.usage"), at("cpu", "cpu.stat"), at("memory", "memory.usage_in_bytes"),
                         at("memory", "memory.max_usage_in_bytes"), at("memory", "memory.limit_in_bytes"),
                         at("memory", "memory.oom_control"))
            else:
                d = str(self.paths(wid)[0])
                files = tuple(f"{d}/{n}" for n in ("cpu.stat", "memory.current", "memory.peak", "memory.max",
                                                     "memory.events"))
            self._files[wid] = files
        return files

    def _slurp(self, path: str) -> bytes:
        """A counter file's content. The files stay open between samples (a pread costs a tenth
        of an open, read and close) up to a budget of descriptors; remove() closes them."""
        if not path:
            return b""
        with self._fd_lock:
            fd = self._fds.get(path)
            if fd is not None:
                try:
                    return os.pread(fd, 8192, 0)
                except OSError:
                    del self._fds[path]
                    os.close(fd)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return b""
            try:
                data = os.pread(fd, 8192, 0)
            except OSError:
                os.close(fd)
                return b""
            if len(self._fds) < self._fd_budget:
                self._fds[path] = fd
            else:
                os.close(fd)
            return data

    def _forget_files(self, wid: str) -> None:
        files = self._files.pop(wid, ())
        with self._fd_lock:
            for path in files:
                fd = self._fds.pop(path, None)
                if fd is not None:
                    os.close(fd)

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    @staticmethod
    def _int(raw: bytes, default: int = 0) -> int:
        try:
            return int(raw)
        except ValueError:
            return default  # "max", empty or missing

    @staticmethod
    def _pairs(raw: bytes) -> dict[bytes, int]:
        out = {}
        for line in raw.splitlines():
            key, _, value = line.partition(b" ")
            if value.lstrip(b"-").isdigit():
                out[key] = int(value)
        return out

    def counters(self, wid: str) -> Counters | None:
        """CPU time, throttled time, memory and OOM kills of the workspace's cgroup now."""
        files = self._counter_files(wid)
        first = self._slurp(files[0])
        if not first and not os.path.isdir(self.paths(wid)[0]):
            self._forget_files(wid)
            return None
        c = Counters(time=time.time())
        if self.version == 1:
            usage, stat, current, peak, limit, oom = first, *(self._slurp(f) for f in files[1:])
            c.cpu_ns = self._int(usage)
            c.cpu_throttled_ns = self._pairs(stat).get(b"throttled_time", 0)
            c.memory_current = self._int(current)
            c.memory_peak = self._int(peak)
            lim = self._int(limit)
            c.memory_limit = lim if 0 < lim < UNLIMITED_V1 else 0
            # oom_kill is there from Linux 4.13; memory.failcnt counts reclaim hits, not kills.
            c.oom_kills = self._pairs(oom).get(b"oom_kill", 0)
        else:
            stat, current, peak, limit, events = first, *(self._slurp(f) for f in files[1:])
            st = self._pairs(stat)
            c.cpu_ns = st.get(b"usage_usec", 0) * 1000
            c.cpu_throttled_ns = st.get(b"throttled_usec", 0) * 1000
            c.memory_current = self._int(current)
            c.memory_peak = self._int(peak)  # Linux 5.19 and later; else 0
            c.memory_limit = self._int(limit)
            c.oom_kills = self._pairs(events).get(b"oom_kill", 0)
        return c

    def _read_text(self, path: Path) -> str:
        try:
            return self._read(path)
        except OSError:
            return ""

    def _read_int(self, path: Path, default: int = 0) -> int:
        text = self._read_text(path).strip()
        try:
            return int(text)
        except ValueError:
            return default  # "max", empty or missing

    def _keyed(self, path: Path) -> dict[str, int]:
        out = {}
        for line in self._read_text(path).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                out[parts[0]] = int(parts[1])
        return out

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
    def _wait(self, what: str, done, timeout: float | None = None, again=None) -> None:
        """Polls until done(); `again`, if given, is called every FREEZE_RETRY_SECONDS meanwhile."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        next_again = time.monotonic() + FREEZE_RETRY_SECONDS
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise errors.BackendError(f"cgroup {what} did not complete within {timeout:.1f}s")
            if again is not None and now >= next_again:
                again()
                next_again = now + FREEZE_RETRY_SECONDS
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
        again = (lambda: self._write(d / "freezer.state", "FROZEN")) if self.version == 1 else None
        try:
            self._wait(f"freeze of {d}", lambda: self.is_frozen(wid), timeout, again)
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
            live = [p for p in self.pids(wid) if host.alive(p)]
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
        self._forget_files(wid)
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
            [d / "vws" / self.manager_id for d in self._v1_dirs]
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
