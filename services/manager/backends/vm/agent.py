"""The guest agent: programs run in a guest through the QEMU guest agent (guest-exec), each in a
helper process (python -m vws.manager.backends.vm.guest_exec) so that the manager's Exec stream
treats them like any program."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from ....common import errors
from ..base import ExecOptions, HostHandle
from .connection import libvirt, libvirt_qemu, vir_error

GUEST_EXEC = "vws.manager.backends.vm.guest_exec"


class GuestAgent:
    def __init__(self, uri: str, agent_timeout: float):
        """agent_timeout: how long after its start a guest has for its agent to answer."""
        self.uri = uri
        self.agent_timeout = agent_timeout

    @staticmethod
    def command(d, command: dict, timeout: int = 5) -> dict:
        return json.loads(libvirt_qemu.qemuAgentCommand(d, json.dumps(command), timeout, 0))

    @staticmethod
    def require(handle: HostHandle, has_agent: bool) -> None:
        """FailedPrecondition when the workspace's image has no agent (has_agent, from its plan)."""
        if not has_agent:
            raise errors.FailedPrecondition(
                f"workspaces/{handle.workspace_id} boots an image without the QEMU guest agent, so programs cannot "
                "be started in it from outside; use an image with qemu-guest-agent")

    def wait(self, handle: HostHandle, d, booted: float, timeout: float | None = None) -> float:
        """Seconds until the agent of domain d answered; FailedPrecondition when it does not.
        booted: the monotonic time the guest was last started."""
        if timeout is None:  # a guest still booting gets until agent_timeout after its start
            timeout = max(2.0, booted + self.agent_timeout - time.monotonic())
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = ""
        while True:
            try:
                self.command(d, {"execute": "guest-ping"}, 1)
                return time.monotonic() - t0
            except libvirt.libvirtError as exc:
                last = vir_error(exc)
                if "not configured" in last:
                    raise errors.FailedPrecondition(
                        f"workspaces/{handle.workspace_id} has no guest agent channel; programs cannot be started "
                        "in it") from None
            if time.monotonic() >= deadline:
                raise errors.FailedPrecondition(
                    f"the guest agent of workspaces/{handle.workspace_id} did not answer within {timeout:.0f}s "
                    f"({last}); the guest has no agent running or has not finished booting")
            time.sleep(0.1)

    def spawn(self, handle: HostHandle, options: ExecOptions) -> subprocess.Popen:
        """The helper process running options' program in the guest (call wait first)."""
        request = {"uri": self.uri, "domain": handle.host_identity, "argv": options.argv,
                   "environment": options.environment, "working_directory": options.working_directory}
        return subprocess.Popen([sys.executable, "-m", GUEST_EXEC, json.dumps(request)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
