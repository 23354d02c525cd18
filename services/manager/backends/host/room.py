"""A full disk met writing on the host, answered as RESOURCE_EXHAUSTED naming the disk: the
host's (its operator makes room) or the workspace's own (its owner asks for a larger one)."""
from __future__ import annotations

import errno
from pathlib import Path

from ....common import errors

FULL = (errno.ENOSPC, errno.EDQUOT)


def no_room(what: str, where: Path, disk: str = "") -> errors.ResourceExhausted:
    """The error for a full disk met writing `what` in where. disk: the field that sized where's
    filesystem when it is the workspace's own, "" for the host's."""
    if disk:
        full = f"the workspace's disk ({disk}) has no room for {what}"
        return errors.ResourceExhausted(f"{full}; ask for a larger disk", [(disk, f"{full}; ask for more")])
    full = f"the host's disk holding {where} has no room for {what}"
    return errors.ResourceExhausted(full, [(f"host disk of {where}", full)])
