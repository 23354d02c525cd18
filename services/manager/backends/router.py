"""One manager, several plug-ins: routes each call to the plug-in that realises the workspace's
kind, so that the service layer never branches on the kind itself."""
from __future__ import annotations

import dataclasses
import logging
import subprocess

from ...common import errors, kinds, model
from .base import Backend, Counters, ExecOptions, HostHandle, Package

log = logging.getLogger("vws.manager.backends")


class KindRouter(Backend):
    def __init__(self, backends: list[Backend]):
        if not backends:
            raise errors.InvalidArgument("no backend configured", "backend")
        self.backends = list(backends)
        self._by_kind: dict[model.Kind, Backend] = {}
        for b in backends:
            for k in b.kinds:
                self._by_kind.setdefault(k, b)
        self.kinds = frozenset(self._by_kind)
        self.name = "+".join(b.name for b in backends)
        self.account_pool = next((b.account_pool for b in backends if b.account_pool), "")

    def _for(self, kind: model.Kind | None) -> Backend:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise errors.Unimplemented(f"this manager ({self.name}) does not realise "
                                       f"{kinds.name_of(kind)} workspaces") from None

    def capacity(self) -> model.Capacity:
        # The plug-ins share one host: its figures, and the largest workspace count any offers.
        caps = [b.capacity() for b in self.backends]
        return model.Capacity(max(c.workspaces for c in caps), max(c.memory_bytes for c in caps),
                              max(c.disk_bytes for c in caps), max(c.cpu_millis for c in caps))

    def realise(self, workspace_id: str, spec: model.WorkspaceSpec, progress=None) -> HostHandle:
        handle = self._for(spec.kind).realise(workspace_id, spec, progress)
        return dataclasses.replace(handle, kind=spec.kind)

    def start(self, handle: HostHandle) -> str | None:
        return self._for(handle.kind).start(handle)

    def stop(self, handle: HostHandle, force: bool = False) -> str | None:
        return self._for(handle.kind).stop(handle, force)

    def pause(self, handle: HostHandle) -> str | None:
        return self._for(handle.kind).pause(handle)

    def resume(self, handle: HostHandle) -> str | None:
        return self._for(handle.kind).resume(handle)

    def suspend(self, handle: HostHandle) -> str | None:
        return self._for(handle.kind).suspend(handle)

    def reboot(self, handle: HostHandle) -> str | None:
        return self._for(handle.kind).reboot(handle)

    def pack(self, handle: HostHandle, spec: model.WorkspaceSpec, state: model.State, workdir) -> Package:
        return self._for(handle.kind).pack(handle, spec, state, workdir)

    def revert_pack(self, handle: HostHandle, package: Package, state: model.State) -> None:
        self._for(handle.kind).revert_pack(handle, package, state)

    def unpack(self, workspace_id: str, spec: model.WorkspaceSpec, package: Package, state: model.State
               ) -> HostHandle:
        handle = self._for(spec.kind).unpack(workspace_id, spec, package, state)
        return dataclasses.replace(handle, kind=spec.kind)

    def describe(self, handle: HostHandle) -> str:
        return self._for(handle.kind).describe(handle)

    def destroy(self, handle: HostHandle) -> None:
        self._for(handle.kind).destroy(handle)

    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        return self._for(handle.kind).spawn(handle, options)

    def exists(self, handle: HostHandle) -> bool:
        return self._for(handle.kind).exists(handle)

    def enforcement(self, handle: HostHandle) -> model.Enforcement | None:
        return self._for(handle.kind).enforcement(handle)

    def sample(self, handle: HostHandle) -> Counters | None:
        return self._for(handle.kind).sample(handle)

    def restore(self, handle: HostHandle, spec: model.WorkspaceSpec, running: bool) -> list[str]:
        return self._for(handle.kind).restore(handle, spec, running)

    def inventory(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for b in self.backends:
            found.update(b.inventory())
        return found

    def reclaim(self, host_identity: str) -> None:
        for b in self.backends:
            if host_identity in b.inventory():
                b.reclaim(host_identity)
                return

    def maintain(self) -> None:
        for b in self.backends:
            try:
                b.maintain()
            except Exception:  # noqa: BLE001 - one plug-in's trouble must not stop the others'
                log.exception("maintenance of %s failed", b.name)

    def close(self) -> None:
        for b in self.backends:
            b.close()
