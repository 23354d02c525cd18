"""The manager's image cache: each image file copied once from the repository's image store,
keyed by its digest, verified by the native copy-and-checksum core in the same pass as the
copy. A copy whose digest does not match is discarded and copied again; after the last attempt
the workspace fails, and nothing unverified is ever booted."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable

from ....common import errors, model, units
from ..host.room import FULL, no_room
from vws.native import copysum

log = logging.getLogger("vws.manager.images")
ATTEMPTS = 3


class ImageCache:
    def __init__(self, root: Path, attempts: int = ATTEMPTS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.attempts = attempts
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path(self, digest: str) -> Path:
        _, raw = copysum.parse_digest(digest)
        return self.root / raw.hex()

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def ensure(self, image: model.Image, f: model.ImageFile,
               progress: Callable[[int, int], None] | None = None) -> Path:
        """The cached copy of one image file, copied and verified first if it is not here yet."""
        try:
            target = self.path(f.digest)
        except ValueError as exc:
            raise errors.FailedPrecondition(f"image {image.name}: its {f.role.value.lower()} file has no usable "
                                            f"digest ({exc}); add the image again") from None
        with self._lock(target.name):
            if target.exists():
                return target
            last = None
            for attempt in range(1, self.attempts + 1):
                try:
                    copysum.copy_file(f.location, str(target), expected=f.digest, progress=progress, fsync=True)
                except copysum.DigestMismatch as exc:
                    last = exc
                    log.warning("image %s, %s file: copy %d of %d does not match its digest (expected %s, got %s); "
                                "discarded", image.name, f.role.value.lower(), attempt, self.attempts,
                                exc.expected, exc.actual)
                    continue
                except FileNotFoundError:
                    raise errors.FailedPrecondition(
                        f"image {image.name}: its {f.role.value.lower()} file {f.location} is not in the image "
                        "store this manager reads; the store must be reachable from every manager") from None
                except PermissionError:
                    raise errors.FailedPrecondition(
                        f"image {image.name}: this manager may not read {f.location}") from None
                except OSError as exc:
                    if exc.errno not in FULL:
                        raise
                    raise no_room(f"the {f.role.value.lower()} file of image {image.name} "
                                  f"({units.format_size(f.size_bytes)})", self.root) from None
                os.chmod(target, 0o444)  # a backing file: overlays write elsewhere
                log.info("image %s: %s file cached (%s, %s)", image.name, f.role.value.lower(),
                         units.format_size(f.size_bytes), f.digest)
                return target
            raise errors.FailedPrecondition(
                f"image {image.name}: its {f.role.value.lower()} file did not match its digest in {self.attempts} "
                f"copies (expected {last.expected}, got {last.actual}); the copy in the image store is damaged, "
                "so nothing was booted: add the image again (`vws image rm`, `vws image add`)")

    def usage(self) -> int:
        return sum(p.stat().st_blocks * 512 for p in self.root.iterdir() if p.is_file())
