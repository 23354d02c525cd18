"""A VM workspace's files on this host, in <state_dir>/vm/workspaces/<id>/:

    overlay.qcow2   the guest's disk (copy-on-write on the cached image)
    console.log     everything the guest wrote to its serial console
    plan.json       what the domain was made from (image, boot, agent, its link)
    memory.save     the serialised memory state while SUSPENDED
    suspend.json    the digests of memory.save and overlay.qcow2 recorded at suspend, checked
                    before the guest is restored"""
from __future__ import annotations

import json
from pathlib import Path


class WorkspaceFiles:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def dir(self, workspace_id: str) -> Path:
        return self.root / workspace_id

    def plan_path(self, workspace_id: str) -> Path:
        return self.dir(workspace_id) / "plan.json"

    def plan(self, workspace_id: str) -> dict:
        """What plan.json holds; {} when it is missing or unreadable."""
        try:
            return json.loads(self.plan_path(workspace_id).read_text())
        except (OSError, ValueError):
            return {}

    def write_plan(self, workspace_id: str, plan: dict) -> None:
        self.plan_path(workspace_id).write_text(json.dumps(plan))
