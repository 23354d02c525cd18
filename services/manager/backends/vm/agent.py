"""The guest agent: programs run in a guest through the QEMU guest agent (guest-exec), each in a
helper process (python -m vws.manager.backends.vm.guest_exec) so that the manager's Exec stream
treats them like any program."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from ....common import errors, kinds
from ....common.model import Kind
from ... import exec_limits
from ..base import ExecOptions, HostHandle
from .connection import libvirt, libvirt_qemu, vir_error

GUEST_EXEC = "vws.manager.backends.vm.guest_exec"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The guest agent stops answering a longer command, and libvirt then takes it for gone.
MAX_COMMAND_BYTES = kinds.of(Kind.VIRTUAL_MACHINE).command_bytes


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
        command = exec_command(options)
        exec_limits.check_encoded(options.argv, options.environment, len(command.encode("utf-8", "surrogatepass")),
                                  MAX_COMMAND_BYTES, "the guest agent")
        request = json.dumps({"uri": self.uri, "domain": handle.host_identity, "program": options.argv[0],
                              "command": command})
        # An anonymous file, not an argument: one argument holds at most 128 KiB (MAX_ARG_STRLEN).
        fd = os.memfd_create("vws-guest-exec")
        try:
            os.write(fd, request.encode("utf-8", "surrogatepass"))
            os.lseek(fd, 0, os.SEEK_SET)
            return subprocess.Popen([sys.executable, "-m", GUEST_EXEC, str(fd)], pass_fds=(fd,),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        finally:
            os.close(fd)


def check_environment(environment: dict[str, str]) -> None:
    """InvalidArgument when a workspace's environment, which every program it runs receives,
    takes more than half of what the guest agent takes in one command (the rest is the program's)."""
    size = len(exec_command(ExecOptions(["true"], environment, "")).encode("utf-8", "surrogatepass"))
    if size > MAX_COMMAND_BYTES // 2:
        raise errors.InvalidArgument(
            f"takes {size} bytes in the guest agent's command of every program; at most {MAX_COMMAND_BYTES // 2} "
            f"(half the {MAX_COMMAND_BYTES} the agent takes in one, control characters 6 bytes each): shorten it, "
            "or stage a file with the values and read it", "workspace.spec.software.environment")


def exec_command(options: ExecOptions) -> str:
    """The guest-exec command running options' program, as the agent receives it (JSON, UTF-8 as
    is: only control characters are escaped)."""
    program, args = options.argv[0], options.argv[1:]
    if options.working_directory:
        args = ["-c", 'cd "$1" && shift && exec "$@"', "sh", options.working_directory, program, *args]
        program = "/bin/sh"
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", **options.environment}
    return json.dumps({"execute": "guest-exec", "arguments": {
        "path": program, "arg": args, "env": [f"{k}={v}" for k, v in env.items()], "capture-output": True}},
        ensure_ascii=False)
