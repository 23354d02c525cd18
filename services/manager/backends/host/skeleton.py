"""A workspace's home made and filled from the site's skeleton directory, each entry owned by the
account. What the host refuses is the domain error it is, mapped here (home_error) for every
plug-in: a full disk is RESOURCE_EXHAUSTED, a skeleton entry that cannot be copied (a special
file, a clash with what the home holds, unreadable) is FAILED_PRECONDITION for the site's operator."""
from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from ....common import errors
from .room import FULL, no_room


def home_error(exc: OSError, home: Path, skeleton: Path, entry: str = "", disk: str = "") -> errors.VwsError:
    """The domain error for exc, met making home or copying skeleton/entry into it. disk: the
    field that sized home's filesystem when it is the workspace's own, "" for the host's."""
    if exc.errno in FULL:
        return no_room(f"the skeleton {skeleton}", home, disk)
    if not entry:
        return errors.FailedPrecondition(
            f"the workspace's home {home} cannot be made: {exc.strerror or exc}; the site's operator must make "
            f"room for it in {home.parent} (remove what is there, or make the directory writable)")
    return errors.FailedPrecondition(
        f"the skeleton entry {skeleton / entry} cannot be copied into the workspace's home {home}: "
        f"{exc.strerror or exc}; the site's operator must fix the skeleton directory {skeleton}")


def make_home(home: Path, skeleton: Path, uid: int, gid: int) -> None:
    """A new home (mode 0700) holding a copy of skeleton; the domain error when the host refuses,
    and no home left then."""
    try:
        os.mkdir(home, 0o700)
    except OSError as exc:
        raise home_error(exc, home, skeleton) from None
    try:
        os.chown(home, uid, gid)
        fill(home, skeleton, uid, gid)
    except OSError as exc:
        shutil.rmtree(home, ignore_errors=True)
        raise home_error(exc, home, skeleton) from None
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise


def fill(home: Path, skeleton: Path, uid: int, gid: int, disk: str = "") -> None:
    """Copies skeleton (when it is a directory) into home, each entry owned by uid:gid; symlinks
    are copied as links; a device, pipe or socket is refused (a device owned by the account
    would be a way past every permission). disk: as for home_error."""
    if not skeleton.is_dir():
        return
    entry = ""
    try:
        for top, dirs, files in os.walk(skeleton, onerror=_raise):
            for name in dirs + files:
                entry = os.path.relpath(os.path.join(top, name), skeleton)
                _copy(skeleton / entry, home / entry, uid, gid)
    except OSError as exc:
        unread = exc.filename and not str(exc.filename).startswith(str(home))
        raise home_error(exc, home, skeleton, os.path.relpath(exc.filename, skeleton) if unread else entry,
                         disk) from None


def _raise(exc: OSError) -> None:
    raise exc


def _copy(src: Path, dst: Path, uid: int, gid: int) -> None:
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(dst)
        except FileExistsError:
            if dst.is_symlink() or not dst.is_dir():
                raise OSError(errno.EEXIST, "the home holds something other than a directory there") from None
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    elif stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode):
        if dst.is_dir() and not dst.is_symlink():
            raise OSError(errno.EISDIR, "the home holds a directory there")
        dst.unlink(missing_ok=True)  # never written through: what is there may be a symlink
        shutil.copy2(src, dst, follow_symlinks=False)
    else:
        raise OSError(errno.EPERM, "it is a device, pipe or socket, which a home may not hold; remove it")
    os.lchown(dst, uid, gid)
