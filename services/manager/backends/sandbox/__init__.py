"""SANDBOX workspaces: an account per workspace whose programs run in namespaces of their own."""
from __future__ import annotations

import dataclasses

from ....common.config import ManagerSettings
from ..base import Backend, BackendSettings
from .backend import SandboxBackend


def enabled(settings: ManagerSettings) -> bool:
    return settings.sandboxes


def create(settings: ManagerSettings, shared: BackendSettings, get_image) -> Backend:
    return SandboxBackend(dataclasses.replace(shared, kind=SandboxBackend.name))
