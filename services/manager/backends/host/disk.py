"""A filesystem of its own per workspace: an image file under <state_dir>/disks/<wid>.img whose
space is reserved with fallocate (really there, not sparse), formatted ext4 and loop-mounted on
the workspace's home. Writing past it gives ENOSPC inside and touches nothing outside.

Formatting and loop-mounting take tens of milliseconds (see DiskImages.timings), too slow for
the path of a create, so a background thread keeps a small stock of images of the site's
default size formatted and mounted under <state_dir>/disks/ready/ (a private mount, so that
mounts under it may be moved); a workspace of that size gets one by a rename of its file and a
move of its mount onto the home (a few system calls). Other sizes are formatted on demand.

Every image this manager made is a file in <state_dir>/disks: sweep() finds those no workspace
owns (after a crash) and removes them with their mounts."""
from __future__ import annotations

import ctypes
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

from ....common import errors, units
from . import skeleton as skeleton_copy

log = logging.getLogger("vws.manager.backends")

ROOT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
MIB = 1024 ** 2
READY = "ready-"
REFILL_DELAY = 1.0  # seconds between a take and the stock's refill

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    if _libc.mount(source.encode() if source else None, target.encode(),
                   fstype.encode() if fstype else None, flags, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def _umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(target.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), target)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, source, filesystem type) of every mount in this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            a, b = left.split(), right.split()
            if len(a) >= 5 and len(b) >= 2:
                out.append((_unescape(a[4]), _unescape(b[1]), b[0]))
    return out


def _is_shared(path: str) -> bool:
    """Whether the mount holding path propagates (shared:N in mountinfo)."""
    best, shared = "", False
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left = line.partition(" - ")[0].split()
            if len(left) < 6:
                continue
            point = _unescape(left[4])
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, shared = point, any(x.startswith("shared:") for x in left[6:])
    return shared


def loop_backing(device: str) -> str:
    """The file behind /dev/loopN ('' when none or not a loop device)."""
    name = os.path.basename(device)
    if not name.startswith("loop"):
        return ""
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip().removesuffix(" (deleted)")
    except OSError:
        return ""


def image_size(usable: int) -> tuple[int, int]:
    """(image bytes, journal MiB) so that the ext4 made in it offers at least `usable` bytes:
    with -i 65536 the inode tables take 1/256 of it, bitmaps and descriptors less; the journal
    is fixed; 1/32 + 8 MiB covers the rest with room."""
    journal = 4 if usable <= 256 * MIB else (16 if usable <= 4096 * MIB else 64)
    size = usable + usable // 32 + (journal + 8) * MIB
    return (size + MIB - 1) // MIB * MIB, journal


class DiskImages:
    def __init__(self, directory: Path, stock_bytes: int = 0, stock_count: int = 0):
        self.dir = Path(directory)
        self.ready_dir = self.dir / "ready"
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        self.stock_bytes = stock_bytes
        self.stock_count = stock_count if stock_bytes else 0
        self._lock = threading.Lock()
        self._stock: list[str] = []  # names (without .img) of ready images, mounted at ready/<name>
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.timings: dict[str, list[float]] = {"fallocate": [], "mkfs": [], "mount": [], "take": [], "release": []}
        self._bound = False
        self._where: dict[str, str] = {}  # wid -> mount point, as attached by this process
        self._discard_old_stock()

    def _start_stock(self) -> None:
        """The stock is made once a workspace has asked for its size (not by every backend made)."""
        with self._lock:
            if self._thread is not None or not self.stock_count or self._stop.is_set():
                return
            self._private_ready()
            self._thread = threading.Thread(target=self._refill_loop, daemon=True, name="disk stock")
            self._thread.start()

    # ----------------------------------------------------------------- helpers
    def image(self, name: str) -> Path:
        return self.dir / f"{name}.img"

    def _private_ready(self) -> None:
        """ready/ on a private mount: a mount under a shared parent (the usual / on systemd hosts)
        cannot be moved, so there ready/ becomes a private bind mount of itself."""
        target = str(self.ready_dir)
        if os.path.ismount(target) or not _is_shared(target):
            return
        _mount(target, target, None, MS_BIND)
        _mount(None, target, None, MS_PRIVATE)
        self._bound = True

    def _note(self, what: str, seconds: float) -> None:
        t = self.timings[what]
        t.append(seconds)
        del t[:-100]

    def _run(self, argv: list[str], what: str, background: bool = False) -> None:
        if background:  # the stock is made at idle priority: creates on the hot path come first
            argv = ["nice", "-n", "19", "ionice", "-c", "3", *argv]
        r = subprocess.run(argv, capture_output=True, text=True, env={"PATH": ROOT_PATH})
        if r.returncode != 0:
            text = r.stderr.strip() or r.stdout.strip()
            if "No space left" in text:
                raise errors.ResourceExhausted(f"{what}: the disk holding {self.dir} is full",
                                               [("workspace.spec.resources.disk_bytes", "no room for the image")])
            raise errors.BackendError(f"{what} failed with status {r.returncode}: {text}")

    def make(self, name: str, usable: int, mount_on: Path, background: bool = False) -> None:
        """Reserves, formats and loop-mounts an image offering at least `usable` bytes."""
        path = self.image(name)
        size, journal = image_size(usable)
        t0 = time.perf_counter()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if exc.errno == 28:
                raise errors.ResourceExhausted(
                    f"no room for a {units.format_size(usable)} disk in {self.dir}",
                    [("workspace.spec.resources.disk_bytes", f"{units.format_size(usable)} wanted, the disk of "
                      f"{self.dir} is full")]) from exc
            raise
        t1 = time.perf_counter()
        try:
            # nodiscard: discarding a file's blocks punches holes in it, undoing the reservation.
            self._run(["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "65536", "-J", f"size={journal}",
                       "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard", str(path)], f"mkfs.ext4 {path}",
                      background)
            t2 = time.perf_counter()
            self._run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev", str(path), str(mount_on)],
                      f"mounting {path} on {mount_on}")
            t3 = time.perf_counter()
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self._note("fallocate", t1 - t0)
        self._note("mkfs", t2 - t1)
        self._note("mount", t3 - t2)

    # ------------------------------------------------------------------- stock
    def _refill_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refill()
            except Exception:  # noqa: BLE001 - the stock is an optimisation: retry later
                log.exception("making a ready disk image failed")
                self._stop.wait(5)
            self._wake.wait(5)
            self._wake.clear()
            # A destroy soon after a take usually hands its filesystem back (recycle): give it
            # the chance before formatting a new one.
            self._stop.wait(REFILL_DELAY)

    def refill(self) -> None:
        """Makes ready images until the stock is full (or the manager closes)."""
        while not self._stop.is_set():
            with self._lock:
                if len(self._stock) >= self.stock_count:
                    return
            name = READY + secrets.token_hex(6)
            mount_on = self.ready_dir / name
            mount_on.mkdir()
            try:
                self.make(name, self.stock_bytes, mount_on, background=True)
            except BaseException:
                mount_on.rmdir()
                raise
            with self._lock:
                if self._stop.is_set():
                    self._drop(name)
                    return
                self._stock.append(name)

    def ready(self) -> int:
        with self._lock:
            return len(self._stock)

    def _drop(self, name: str) -> None:
        self._unmount_image(self.image(name))
        self.image(name).unlink(missing_ok=True)
        try:
            (self.ready_dir / name).rmdir()
        except OSError:
            pass

    def _discard_old_stock(self) -> None:
        for p in self.dir.glob(READY + "*.img"):
            self._drop(p.stem)
        for p in self.ready_dir.iterdir():
            if p.is_dir() and not os.path.ismount(p):
                p.rmdir()

    # -------------------------------------------------------------- workspaces
    def attach(self, wid: str, usable: int, home: Path, uid: int, gid: int, skeleton: Path | None) -> None:
        """Mounts a filesystem of at least `usable` bytes of wid's own on home (owned by uid,
        mode 0700, holding a copy of the skeleton). Idempotent."""
        home = Path(home)
        if self.mount_point(wid) == str(home):
            return
        t0 = time.perf_counter()
        name = None
        if usable == self.stock_bytes:
            self._start_stock()
            with self._lock:
                name = self._stock.pop() if self._stock else None
        if name is not None:
            self._wake.set()
            os.rename(self.image(name), self.image(wid))
            try:
                _mount(str(self.ready_dir / name), str(home), None, MS_MOVE)
            except BaseException:
                os.rename(self.image(wid), self.image(name))
                self._drop(name)
                raise
            (self.ready_dir / name).rmdir()
        else:
            self.make(wid, usable, home)
        try:
            try:
                (home / "lost+found").rmdir()
            except OSError:
                pass
            if skeleton is not None:
                skeleton_copy.fill(home, skeleton, uid, gid, "workspace.spec.resources.disk_bytes")
            os.chown(home, uid, gid)
            os.chmod(home, 0o700)
        except BaseException:
            self.release(wid)
            raise
        self._where[wid] = str(home)
        self._note("take", time.perf_counter() - t0)

    def remount(self, wid: str, home: Path) -> None:
        """Mounts wid's existing image on home again (after the host restarted), its files intact."""
        self._run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev", str(self.image(wid)), str(home)],
                  f"mounting {self.image(wid)} on {home}")
        self._where[wid] = str(home)

    def mount_point(self, wid: str) -> str | None:
        """Where wid's image is mounted (None: nowhere)."""
        known = self._where.get(wid)
        if known is not None and os.path.ismount(known):
            return known
        image = str(self.image(wid))
        for target, source, _ in mounts():
            if source.startswith("/dev/loop") and loop_backing(source) == image:
                return target
        return None

    def _unmount_image(self, image: Path) -> None:
        wanted = str(image)
        for target, source, _ in reversed(mounts()):
            if source.startswith("/dev/loop") and loop_backing(source) == wanted:
                try:
                    _umount(target)
                except OSError as exc:
                    if exc.errno == 16:  # EBUSY: something still holds it; it goes when released
                        log.warning("%s busy; detaching it lazily", target)
                        _umount(target, MNT_DETACH)
                    elif exc.errno not in (2, 22):  # gone meanwhile, or not a mount point any more
                        raise

    def release(self, wid: str) -> None:
        """Unmounts wid's filesystem wherever it is mounted and deletes its image, or, when it
        has the stock's size and the stock has room, empties it and puts it back in the stock
        (the next workspace then needs no format). Idempotent. Kill the workspace's processes
        first."""
        t0 = time.perf_counter()
        image = self.image(wid)
        if not image.exists():
            self._where.pop(wid, None)
            return
        if self._recycle(wid, image):
            self._where.pop(wid, None)
            self._note("release", time.perf_counter() - t0)
            return
        self._unmount_image(image)
        self._where.pop(wid, None)
        image.unlink(missing_ok=True)
        self._note("release", time.perf_counter() - t0)

    def _recycle(self, wid: str, image: Path) -> bool:
        """Empties wid's filesystem and moves it back into the stock. Its files are deleted, not
        overwritten: the next owner reaches the filesystem only through its (empty) tree."""
        if not self.stock_count or self._thread is None or self._stop.is_set():
            return False
        stock_size = image_size(self.stock_bytes)[0]
        with self._lock:
            if len(self._stock) >= self.stock_count:
                return False
        try:
            if image.stat().st_size != stock_size:
                return False
            where = self.mount_point(wid)
            if where is None:
                return False
            for entry in os.scandir(where):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            name = READY + secrets.token_hex(6)
            target = self.ready_dir / name
            target.mkdir()
            try:
                _mount(where, str(target), None, MS_MOVE)
            except OSError:
                target.rmdir()
                raise
            os.rename(image, self.image(name))
            os.chown(target, 0, 0)
            os.chmod(target, 0o755)
        except OSError as exc:
            log.info("not recycling the disk of %s (%s); removing it", wid, exc)
            return False
        with self._lock:
            self._stock.append(name)
        return True

    def images(self) -> list[str]:
        """Workspace ids having an image here."""
        return sorted(p.stem for p in self.dir.glob("*.img") if not p.name.startswith(READY))

    def usage(self, wid: str) -> tuple[int, int, str] | None:
        """(usable bytes, used bytes, mount point) of wid's filesystem; None when not mounted."""
        where = self.mount_point(wid)
        if where is None:
            return None
        st = os.statvfs(where)
        return st.f_blocks * st.f_frsize, (st.f_blocks - st.f_bfree) * st.f_frsize, where

    def sweep(self, owned: set[str]) -> list[str]:
        """Removes the images (and their mounts) of workspaces not in owned."""
        gone = [wid for wid in self.images() if wid not in owned]
        for wid in gone:
            log.info("removing the disk image of %s, which no workspace owns", wid)
            self.release(wid)
        return gone

    def stop_stock(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        """Stops the stock thread and removes the stock (workspaces' disks stay)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._lock:
            stock, self._stock = self._stock, []
        for name in stock:
            self._drop(name)
        self._discard_old_stock()
        if self._bound or os.path.ismount(self.ready_dir):
            try:
                _umount(str(self.ready_dir), MNT_DETACH)
            except OSError:
                pass


def release_all_under(top: Path | str) -> list[str]:
    """Unmounts every loop-mounted image whose file is under top and deletes those files, and
    unmounts the ready/ directories there: for tests and decommissioning, whatever the state of
    the workspaces (a manager's close() leaves its workspaces' disks mounted: they outlive it)."""
    top = os.path.realpath(top)
    done = []
    for target, source, _ in reversed(mounts()):
        backing = loop_backing(source) if source.startswith("/dev/loop") else ""
        if backing.startswith(top + "/"):
            try:
                _umount(target)
            except OSError:
                _umount(target, MNT_DETACH)
            Path(backing).unlink(missing_ok=True)
            done.append(target)
    for target, _, _ in reversed(mounts()):
        if target.startswith(top + "/") and os.path.basename(target) == "ready":
            try:
                _umount(target, MNT_DETACH)
            except OSError:
                pass
    return done
