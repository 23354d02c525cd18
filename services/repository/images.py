"""The image catalogue's pieces below the service layer: the image store on disk
(content-addressed: <image_store>/<digest hex>/<role>, so images with the same file share one
copy), the checks on a source file, and the queries on the images and image_files tables
(run inside a session the caller's unit of work owns)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import re
import stat
import time
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..common import host, model
from .db import ImageFileRow, ImageRow

QCOW2_MAGIC = b"QFI\xfb"
DIGEST = re.compile(r"^blake3-4m:[0-9a-f]{64}$")
ROLE_ORDER = {model.FileRole.KERNEL: 0, model.FileRole.INITRD: 1, model.FileRole.DISK: 2}
INCOMING = ".incoming"
# Copies a crashed create left in .incoming are removed once this old.
STALE_INCOMING = 3600.0


class SourceError(Exception):
    """A source file the repository cannot take; the message says why and how to fix it."""


def detect_format(head: bytes) -> model.FileFormat:
    return model.FileFormat.QCOW2 if head[:4] == QCOW2_MAGIC else model.FileFormat.RAW


def check_source(path: str) -> tuple[os.stat_result, model.FileFormat]:
    """The source file's status and its format as its first bytes say; SourceError when it is
    not an absolute path to a readable, non-empty regular file."""
    if not path:
        raise SourceError("is empty; give the absolute path of the file, on the repository's host")
    if not os.path.isabs(path):
        raise SourceError(f"{path!r} is not an absolute path; give it whole, like /srv/images/vmlinuz "
                          "(the repository reads it on its own host, not the client)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path} does not exist on the repository's host") from None
    except OSError as exc:
        raise SourceError(f"{path} cannot be read by the repository: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path} is not a regular file; give the image file itself")
    if st.st_size == 0:
        raise SourceError(f"{path} is empty")
    try:
        # O_NONBLOCK: never hang on something swapped in for the file since the stat.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"{path} cannot be read by the repository: {exc.strerror}") from None
    try:
        head = os.pread(fd, 4, 0)
    except OSError as exc:
        raise SourceError(f"{path} cannot be read by the repository: {exc.strerror}") from None
    finally:
        os.close(fd)
    return st, detect_format(head)


def format_of_file(path: str | os.PathLike) -> model.FileFormat:
    with open(path, "rb") as fh:
        return detect_format(fh.read(4))


class ImageStore:
    """Where image files are kept. Files are written under .incoming, then renamed to their
    content address; placing and removing happen under one lock (a lock file, so that every
    repository process sharing the store takes it) together with the catalogue change they
    belong to, so that a file is never removed while a new image starts to use it."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)

    def ensure(self) -> None:
        (self.root / INCOMING).mkdir(parents=True, exist_ok=True)
        self._sweep_incoming()

    def _sweep_incoming(self) -> None:
        now = time.time()
        try:
            entries = list(os.scandir(self.root / INCOMING))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_INCOMING:
                    os.unlink(entry.path)
            except OSError:
                pass

    @contextlib.contextmanager
    def lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def incoming(self) -> pathlib.Path:
        """A fresh path to copy a file to before it has its address."""
        self.ensure()
        return self.root / INCOMING / uuid.uuid4().hex

    def address(self, digest: str, role: model.FileRole) -> pathlib.Path:
        return self.root / digest.split(":", 1)[-1] / role.value.lower()

    def place(self, copied: pathlib.Path, final: pathlib.Path) -> bool:
        """Moves a copy to its address. False when the address already holds the file (another
        image's, same digest): the copy is dropped. Call under lock()."""
        if final.exists():
            copied.unlink(missing_ok=True)
            return False
        final.parent.mkdir(mode=0o755, exist_ok=True)
        os.chmod(copied, 0o444)
        os.rename(copied, final)
        host.fsync_dir(final.parent)
        return True

    def remove(self, location: str | os.PathLike) -> None:
        """Removes a stored file and its directory once empty. Call under lock()."""
        path = pathlib.Path(location)
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return  # not in this store (its setting changed since): left alone
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise


# ----------------------------------------------------------------------------- rows

def to_image(row: ImageRow, files: list[ImageFileRow]) -> model.Image:
    out = [model.ImageFile(model.FileRole(f.role), model.FileFormat(f.format), f.size_bytes, f.digest, f.location)
           for f in files]
    out.sort(key=lambda f: ROLE_ORDER.get(f.role, 9))
    return model.Image(name=row.name, boot=model.ImageBoot(row.boot), files=out, size_bytes=row.size_bytes,
                       owner=row.owner, visibility=model.ImageVisibility(row.visibility),
                       kernel_args=row.kernel_args, description=row.description, create_time=row.create_time,
                       guest_agent=row.guest_agent)


def insert(session: Session, image: model.Image) -> None:
    """Plain inserts (IntegrityError when the name is taken)."""
    session.execute(ImageRow.__table__.insert(), dict(
        name=image.name, boot=image.boot.value, owner=image.owner, visibility=image.visibility.value,
        kernel_args=image.kernel_args, description=image.description, guest_agent=image.guest_agent,
        size_bytes=image.size_bytes, create_time=image.create_time))
    session.execute(ImageFileRow.__table__.insert(), [dict(
        image_name=image.name, role=f.role.value, format=f.format.value, size_bytes=f.size_bytes,
        digest=f.digest, location=f.location) for f in image.files])


def exists(session: Session, name: str) -> bool:
    return session.execute(sa.select(ImageRow.name).where(ImageRow.name == name)).first() is not None


def get(session: Session, name: str, for_update: bool = False) -> model.Image | None:
    query = sa.select(ImageRow).where(ImageRow.name == name)
    if for_update:
        query = query.with_for_update()
    row = session.execute(query).scalar_one_or_none()
    if row is None:
        return None
    files = session.execute(sa.select(ImageFileRow).where(ImageFileRow.image_name == name)).scalars()
    return to_image(row, list(files))


def list_page(session: Session, owner: str, after: str, limit: int) -> list[model.Image]:
    """By name; with an owner, the public images and that owner's."""
    query = sa.select(ImageRow).where(ImageRow.name > after)
    if owner:
        query = query.where(sa.or_(ImageRow.visibility == model.ImageVisibility.PUBLIC.value,
                                   ImageRow.owner == owner))
    rows = list(session.execute(query.order_by(ImageRow.name).limit(limit)).scalars())
    files: dict[str, list[ImageFileRow]] = {r.name: [] for r in rows}
    if rows:
        for f in session.execute(sa.select(ImageFileRow).where(ImageFileRow.image_name.in_(list(files)))).scalars():
            files[f.image_name].append(f)
    return [to_image(r, files[r.name]) for r in rows]


def delete(session: Session, name: str) -> list[str]:
    """Removes the image; returns the locations of its files that no other image uses."""
    locations = list(session.execute(
        sa.select(ImageFileRow.location).where(ImageFileRow.image_name == name)).scalars())
    session.execute(ImageFileRow.__table__.delete().where(ImageFileRow.image_name == name))
    session.execute(ImageRow.__table__.delete().where(ImageRow.name == name))
    if not locations:
        return []
    still = set(session.execute(sa.select(ImageFileRow.location).where(
        ImageFileRow.location.in_(locations))).scalars())
    return [loc for loc in locations if loc not in still]
