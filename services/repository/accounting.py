"""Usage accounting as the repository keeps it: the managers' latest cumulative figures for
the workspaces they hold, a workspace's usage so far, and the export of usage records (GFD.204)
for grid accounting."""
from __future__ import annotations

import datetime as dt
import math
from typing import Callable

from ..common import errors, model, names
from . import store
from . import usage as usage_store
from .db import UnitOfWork


def check_usage(usage: model.Usage, path: str) -> list[tuple[str, str]]:
    """What is wrong with one reported usage (`path`: where it stands in the request, e.g.
    usage[3]): its name, and every figure that is not a finite amount of 0 or more."""
    try:
        names.parse_workspace_name(usage.name, f"{path}.name")
        violations = []
    except errors.InvalidArgument as exc:
        violations = list(exc.violations)
    for figure in usage_store.FIGURES:
        value = getattr(usage, figure)
        if not math.isfinite(value) or value < 0:
            violations.append((f"{path}.{figure}", f"{value} is not an amount; give a finite figure, 0 or more"))
    return violations


class UsageAccounting:
    def __init__(self, uow: UnitOfWork, clock: Callable[[], dt.datetime] = model.utcnow):
        self.uow, self.clock = uow, clock

    def report_usage(self, manager: str, usages: list[model.Usage]) -> int:
        """A manager's latest cumulative figures for the workspaces it holds. Returns how many
        were kept: those of unknown workspaces, or of workspaces held by another manager, are
        not. Final figures (the workspace ended) are never replaced by later non-final ones."""
        names.parse_manager_name(manager, "manager")
        violations = [v for i, u in enumerate(usages) for v in check_usage(u, f"usage[{i}]")]
        if violations:
            raise errors.InvalidArgument(violations)
        accepted = 0
        with self.uow(write=True) as session:
            now = self.clock()
            # One order for every writer: two reports on the same workspaces never deadlock.
            for u in sorted(usages, key=lambda u: u.name):
                accepted += usage_store.record(session, u, manager, now)
        return accepted

    def get_usage(self, name: str) -> model.Usage:
        """What the workspace has used so far; zeros before its first sample."""
        names.parse_workspace_name(name)
        with self.uow() as session:
            wid = usage_store.workspace_id(session, name)
            if wid is None:
                raise errors.NotFound(f"workspace {name} does not exist")
            return usage_store.to_usage(name, usage_store.get(session, wid))

    def export_usage_records(self, owner: str = "", start: dt.datetime | None = None,
                             end: dt.datetime | None = None) -> tuple[str, int]:
        """A GFD.204 UsageRecords document of every workspace (of `owner`, when given) that ran at
        some time in [start, end), and how many records it holds."""
        store.check_owner(owner)
        if start is not None and end is not None and end <= start:
            raise errors.InvalidArgument(f"{end.isoformat()} is not after start_time {start.isoformat()}; give a "
                                         "later end, or leave it unset for no end", "end_time")
        with self.uow() as session:
            records = usage_store.export_rows(session, owner, start, end)
        return usage_store.usage_records_xml(records), len(records)
