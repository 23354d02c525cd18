"""The image catalogue: images added (every field checked, each file copied into the image
store under its digest), read, listed and removed (with the files no other image uses)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
import os
import pathlib
import stat
from typing import Callable

import sqlalchemy as sa

from ..common import errors, model, names
from ..common.auth.gate import PLAIN_TEXT_CALLER, Caller
from ..common.config import RepositorySettings
from . import images as image_store
from . import store
from .db import UnitOfWork
from .paging import PageTokens, checked_page_size, listing

log = logging.getLogger("vws.repository")

MAX_KERNEL_ARGS = 4096
MAX_DESCRIPTION = 1024
_BOOT_FILES = {  # boot -> (roles it needs exactly once, roles it may have once)
    model.ImageBoot.KERNEL: ({model.FileRole.KERNEL}, {model.FileRole.INITRD}),
    model.ImageBoot.DISK: ({model.FileRole.DISK}, set()),
}


def _checked_image(image_id: str, image: model.Image, owner: str) -> model.Image:
    """Every field of a CreateImage request checked, all violations in one answer; returns the
    image to make (name set, visibility defaulted, each file's format known, its location the
    source path and its digest the expected one, if any)."""
    v: list[tuple[str, str]] = []
    try:
        iid = names.parse_image_name(image_id, "image_id")
    except errors.InvalidArgument as exc:
        v += exc.violations
        iid = ""
    if not owner:
        v.append(("owner", "is empty; give who adds the image (the CLI sends your user name)"))
    elif problem := store.owner_too_long(owner):
        v.append(("owner", problem))
    boot = image.boot
    if boot not in _BOOT_FILES:
        v.append(("image.boot", "is unspecified; give BOOT_KERNEL (a kernel and an initrd) or BOOT_DISK (a disk)"))
    visibility = image.visibility
    if visibility is model.ImageVisibility.UNSPECIFIED:
        visibility = model.ImageVisibility.PRIVATE
    if image.kernel_args:
        if boot is model.ImageBoot.DISK:
            v.append(("image.kernel_args", "only an image booted from a kernel (BOOT_KERNEL) takes kernel arguments; "
                      "a disk boots with its own boot loader's; leave it empty"))
        elif len(image.kernel_args) > MAX_KERNEL_ARGS or any(c in image.kernel_args for c in "\0\n\r"):
            v.append(("image.kernel_args", f"must be one line of at most {MAX_KERNEL_ARGS} characters"))
    if len(image.description) > MAX_DESCRIPTION or "\0" in image.description:
        v.append(("image.description", f"must be at most {MAX_DESCRIPTION} characters without NUL"))

    files: list[model.ImageFile] = []
    seen: dict[model.FileRole, int] = {}
    for i, f in enumerate(image.files):
        path = f"image.files[{i}]"
        if f.role is model.FileRole.UNSPECIFIED:
            v.append((path + ".role", "is unspecified; give ROLE_KERNEL, ROLE_INITRD or ROLE_DISK"))
            continue
        if boot in _BOOT_FILES:
            needed, optional = _BOOT_FILES[boot]
            if f.role not in needed | optional:
                v.append((path + ".role", f"a {boot.value} image has no {f.role.value} file; give "
                          + ("a KERNEL and optionally an INITRD" if boot is model.ImageBoot.KERNEL else "one DISK")))
                continue
        if f.role in seen:
            v.append((path + ".role", f"{f.role.value} is given twice (also files[{seen[f.role]}]); give it once"))
            continue
        seen[f.role] = i
        digest = f.digest.strip().lower()
        if digest and not image_store.DIGEST.match(digest):
            v.append((path + ".digest", f"{f.digest[:80]!r} is not a digest; give blake3-4m:<64 hex digits> "
                      "(what `vws image show` prints), or leave it empty"))
        try:
            _, actual = image_store.check_source(f.location)
        except image_store.SourceError as exc:
            v.append((path + ".location", str(exc)))
            continue
        declared = f.format
        if f.role is model.FileRole.DISK:
            if declared is model.FileFormat.UNSPECIFIED:
                declared = actual
            elif declared is not actual:
                v.append((path + ".format", f"{f.location} is {actual.value.lower()}"
                          + (" (it starts with the qcow2 magic QFI\\xfb)" if actual is model.FileFormat.QCOW2
                             else " (no qcow2 header)")
                          + f", not {declared.value.lower()} as given; give FORMAT_{actual.value}"))
                continue
        else:
            if declared is model.FileFormat.UNSPECIFIED:
                declared = model.FileFormat.RAW
            if declared is not model.FileFormat.RAW:
                v.append((path + ".format", f"a {f.role.value.lower()} is loaded as it is: give FORMAT_RAW or none"))
                continue
            if actual is model.FileFormat.QCOW2:
                v.append((path + ".location", f"{f.location} is a qcow2 disk image, not a {f.role.value.lower()}"))
                continue
        files.append(model.ImageFile(f.role, declared, 0, digest, f.location))
    if boot in _BOOT_FILES:
        for role in sorted(_BOOT_FILES[boot][0] - set(seen), key=lambda r: r.value):
            v.append(("image.files", f"has no {role.value} file; a {boot.value} image needs one"
                      + (" (and optionally an INITRD)" if boot is model.ImageBoot.KERNEL else "")))
    if v:
        raise errors.InvalidArgument(v)
    files.sort(key=lambda f: image_store.ROLE_ORDER[f.role])
    return model.Image(name=names.image_name(iid), boot=boot, files=files, owner=owner, visibility=visibility,
                       kernel_args=image.kernel_args if boot is model.ImageBoot.KERNEL else "",
                       description=image.description, guest_agent=image.guest_agent)


def _check_readable_by_all(files: list[model.ImageFile]) -> None:
    for i, f in enumerate(files):
        try:
            readable = os.stat(f.location).st_mode & stat.S_IROTH
        except OSError:
            readable = False
        if not readable:
            raise errors.PermissionDenied(
                f"image.files[{i}].location: only the site's administrator may add a file that not every local "
                "user may read; make it readable by all (chmod o+r) or ask the administrator to add the image")


def _copy(source: str, target: pathlib.Path, expected: str, index: int):
    """copysum.copy_file, its failures as domain errors naming the field."""
    from vws.native import copysum
    try:
        return copysum.copy_file(source, str(target), expected=expected or None, fsync=True)
    except copysum.DigestMismatch as exc:
        want = getattr(exc, "expected", None) or expected
        got = getattr(exc, "actual", None) or (exc.args[1] if len(exc.args) > 1 else "?")
        raise errors.InvalidArgument(
            f"{source} has digest {got}, not {want} as given; check that it is the file you meant "
            "(or leave the digest out)", f"image.files[{index}].digest") from None
    except OSError as exc:
        if not os.path.isfile(source):
            raise errors.InvalidArgument(f"{source} disappeared while it was copied",
                                         f"image.files[{index}].location") from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise errors.ResourceExhausted(f"the image store {target.parent.parent} has no room for {source}: "
                                           f"{exc.strerror}; free some space or move image_store") from None
        raise errors.Internal(f"copying {source} into the image store failed: {exc.strerror}") from None


class ImageCatalogue:
    def __init__(self, uow: UnitOfWork, settings: RepositorySettings, tokens: PageTokens,
                 clock: Callable[[], dt.datetime] = model.utcnow):
        self.uow, self.settings, self.tokens, self.clock = uow, settings, tokens, clock
        self._store: image_store.ImageStore | None = None

    @property
    def file_store(self) -> image_store.ImageStore:
        """Where the image files are kept, opened at first use."""
        if self._store is None:
            root = self.settings.image_store or (self.settings.data_dir and self.settings.data_dir / "images")
            if not root:
                raise errors.FailedPrecondition("this repository has no image store: set image_store or data_dir")
            self._store = image_store.ImageStore(root)
        return self._store

    def create_image(self, image_id: str, image: model.Image, owner: str, privileged: bool = True) -> model.Image:
        """Adds an image to the catalogue: checks every field, copies each file into the image
        store under its digest (refusing one whose digest is not the expected one) and records
        it. Nothing is left behind when it fails: no row, no copied file. A caller who is not
        `privileged` may give only files every local user may read: the repository reads as root."""
        spec = _checked_image(image_id, image, owner)
        if not privileged:
            _check_readable_by_all(spec.files)
        name = spec.name
        with self.uow() as session:
            if image_store.exists(session, name):
                raise errors.AlreadyExists(f"image {name} already exists; choose another name, or remove it first "
                                           f"(vws image rm {spec.image_id})")
        store_ = self.file_store
        copies: list[pathlib.Path] = []
        placed: list[pathlib.Path] = []
        try:
            for i, f in enumerate(spec.files):
                copied = store_.incoming()
                copies.append(copied)
                result = _copy(f.location, copied, f.digest, i)
                if f.role is model.FileRole.DISK and image_store.format_of_file(copied) is not f.format:
                    raise errors.InvalidArgument(
                        f"{f.location} changed while it was copied: it is no longer "
                        f"{f.format.value.lower()}; copy it again when nothing writes to it",
                        f"image.files[{i}].location")
                spec.files[i] = dataclasses.replace(f, size_bytes=result.size, digest=result.digest,
                                                    location=str(store_.address(result.digest, f.role)))
            spec.size_bytes = sum(f.size_bytes for f in spec.files)
            spec.create_time = self.clock()
            with store_.lock():
                for copied, f in zip(copies, spec.files):
                    if store_.place(copied, pathlib.Path(f.location)):
                        placed.append(pathlib.Path(f.location))
                try:
                    with self.uow(write=True) as session:
                        image_store.insert(session, spec)
                except sa.exc.IntegrityError:
                    raise errors.AlreadyExists(f"image {name} already exists; choose another name") from None
        except BaseException:
            for path in copies:
                path.unlink(missing_ok=True)
            if placed:
                with store_.lock():
                    with self.uow() as session:
                        used = set(session.execute(sa.select(image_store.ImageFileRow.location).where(
                            image_store.ImageFileRow.location.in_([str(p) for p in placed]))).scalars())
                    for path in placed:
                        if str(path) not in used:
                            store_.remove(path)
            raise
        log.info("image %s added by %s: %s", name, spec.owner,
                 ", ".join(f"{f.role.value.lower()} {f.digest} ({f.size_bytes} bytes)" for f in spec.files))
        return spec

    def get_image(self, name: str) -> model.Image:
        full = names.image_name(names.parse_image_name(name))
        with self.uow() as session:
            found = image_store.get(session, full)
        if found is None:
            raise errors.NotFound(f"image {full} does not exist; `vws image list` shows the images there are")
        return found

    def list_images(self, owner: str = "", page_size: int = 0, page_token: str = "") -> tuple[list[model.Image], str]:
        """By name; with an owner, the public images and that owner's; without, every image."""
        size = checked_page_size(page_size)
        store.check_owner(owner)
        what = listing("images", owner=owner)
        after = self.tokens.name_after(page_token, what, names.parse_image_name)
        with self.uow() as session:
            found = image_store.list_page(session, owner, after, size + 1)
        token = self.tokens.name_token(what, found[size - 1].name) if len(found) > size else ""
        return found[:size], token

    def delete_image(self, name: str, by: Caller = PLAIN_TEXT_CALLER) -> None:
        """Removes the image from the catalogue, and from the store each of its files that no
        other image uses. Only its owner or an administrator may."""
        full = names.image_name(names.parse_image_name(name))
        store_ = self.file_store
        with store_.lock():
            with self.uow(write=True) as session:
                found = image_store.get(session, full, for_update=True)
                if found is None or (not by.privileged and found.owner != by.identity):
                    raise errors.NotFound(f"image {full} does not exist or is not yours; `vws image list` shows "
                                          "the images you may use")
                unused = image_store.delete(session, full)
            for location in unused:
                try:
                    store_.remove(location)
                except OSError as exc:
                    log.warning("image %s removed, but not its file %s: %s", full, location, exc.strerror)
        log.info("image %s removed (%d file(s) freed)", full, len(unused))
