"""What this host keeps of each sandbox, one JSON file per workspace in <state_dir>/sandboxes/:
its account, the init's pid and start time (guarding against pid reuse), the network slot and
the bandwidth; and a lock per workspace for the changes to it."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from pathlib import Path
from typing import Iterator

from ....common import host
from ..host import netshape

log = logging.getLogger("vws.manager.backends")


@dataclasses.dataclass
class SandboxState:
    workspace_id: str
    account: str
    net: int                    # netshape slot
    bits_per_second: int = 0    # 0: not shaped
    pid: int = 0                # the init (pid 1 inside), 0 when no sandbox runs
    start_time: int = 0

    @property
    def link(self) -> netshape.Link:
        return netshape.Link(self.net)

    def running_pid(self) -> int:
        """The init's pid if it is still the same process and runs, else 0."""
        if self.pid and host.start_time(self.pid) == self.start_time and host.alive(self.pid):
            return self.pid
        return 0


def read(path: Path) -> SandboxState:
    """OSError, ValueError or TypeError when path holds no sandbox's state."""
    return SandboxState(**json.loads(path.read_text()))


class SandboxStates:
    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def lock(self, wid: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(wid, threading.Lock())

    def path(self, wid: str) -> Path:
        return self.dir / f"{wid}.json"

    def log_path(self, wid: str) -> Path:
        """Where bwrap's own output goes."""
        return self.dir / f"{wid}.log"

    def load(self, wid: str) -> SandboxState | None:
        try:
            return read(self.path(wid))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("unreadable sandbox state of %s (%s): treated as none", wid, exc)
            return None

    def all(self) -> Iterator[SandboxState]:
        for path in self.dir.glob("*.json"):
            st = self.load(path.stem)
            if st is not None:
                yield st

    def save(self, st: SandboxState) -> None:
        path = self.path(st.workspace_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(st)))
        os.replace(tmp, path)

    def new(self, wid: str, account: str, bits: int) -> SandboxState:
        """A state with a network slot of its own reserved, saved."""
        link = netshape.reserve(self._next_slot(), self.path(wid))
        st = SandboxState(wid, account, link.index, bits)
        self.save(st)
        return st

    def _next_slot(self) -> int:
        """Where the search for a free network slot starts: a counter kept in state_dir."""
        counter = self.dir / "net-counter"
        try:
            n = int(counter.read_text())
        except (FileNotFoundError, ValueError):
            n = 0
        counter.write_text(str((n + 1) % netshape.SLOTS))
        return n

    def remove(self, st: SandboxState) -> None:
        """Gives the network slot back and deletes the state, its log and its lock (kill first)."""
        netshape.release(st.link, self.path(st.workspace_id))
        self.path(st.workspace_id).unlink(missing_ok=True)
        self.log_path(st.workspace_id).unlink(missing_ok=True)
        with self._locks_lock:
            self._locks.pop(st.workspace_id, None)
