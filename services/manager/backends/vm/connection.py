"""The VM plug-in's host connection: libvirt (imported once, here), the settings of the
connection, the domain type this host runs, and a connection reopened when it drops."""
from __future__ import annotations

import dataclasses
import threading

from ....common import errors
from ..base import HostHandle
from . import domain as dom_xml

try:
    import libvirt
    import libvirt_qemu
except ImportError:  # pragma: no cover - libvirt-python is a dependency; this is for a broken install
    libvirt = libvirt_qemu = None


@dataclasses.dataclass
class VmSettings:
    uri: str = "qemu:///system"
    domain_type: str = "auto"        # kvm | qemu | xen | auto
    orphans: str = "destroy"         # destroy | report
    shutdown_timeout: float = 20.0
    agent_timeout: float = 60.0


def choose_domain_type(uri: str, wanted: str) -> tuple[str, str]:
    """(domain type, why) for this host."""
    if wanted != "auto":
        return wanted, "configured"
    if uri.startswith("xen"):
        return "xen", "a Xen connection"
    from .kvmprobe import kvm_works
    ok, why = kvm_works()
    return ("kvm", "KVM runs guests here") if ok else ("qemu", f"no acceleration: {why}")


def can_raise_rlimits() -> bool:
    """Whether this process has CAP_SYS_RESOURCE (libvirtd, started the same way, has the same)."""
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return True
    return bool(eff & (1 << 24))


def vir_error(exc: Exception) -> str:
    return exc.get_error_message() if hasattr(exc, "get_error_message") else str(exc)


def domain_owner(d) -> tuple[str, str] | None:
    """(workspace, manager) a domain's vws metadata names; None when it has none."""
    try:
        xml = d.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.METADATA_URI)
    except libvirt.libvirtError:
        return None
    return dom_xml.workspace_of(f'<domain><metadata>{_with_ns(xml)}</metadata></domain>')


def _with_ns(xml: str) -> str:
    """libvirt returns the metadata element with its namespace declared on it; make sure."""
    if "xmlns" in xml:
        return xml
    return xml.replace("<workspace", f'<workspace xmlns="{dom_xml.METADATA_URI}"', 1)


class Connection:
    """One libvirt connection, opened again when it has dropped."""

    def __init__(self, uri: str):
        if libvirt is None:
            raise errors.Unimplemented("libvirt-python is not installed")
        self.uri = uri
        self._conn = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise errors.Unavailable(f"libvirt at {self.uri} does not answer: {vir_error(exc)}; "
                                         "is libvirtd running? (scripts/setup-libvirt.sh starts it)") from None
            return self._conn

    def domain(self, handle: HostHandle):
        """The handle's domain; FailedPrecondition when it is gone."""
        try:
            return self.get().lookupByName(handle.host_identity)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise errors.FailedPrecondition(
                    f"domain {handle.host_identity} of workspaces/{handle.workspace_id} is gone from the host") from None
            raise

    def find(self, name: str):
        """The domain of that name, None when there is none."""
        try:
            return self.get().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            return None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
