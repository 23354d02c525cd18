"""Runs one program inside a guest through the QEMU guest agent and behaves like that program:
its output on stdout and stderr, its exit code as this process's (128 + signal when it was
killed). The manager's Exec stream runs this as the workspace's process.

    python -m vws.manager.backends.vm.guest_exec FD

FD: an open file holding the request, {"uri": ..., "domain": ..., "program": "<for messages>",
"command": "<guest-exec, as JSON>"}
(agent.py writes it); a file, not an argument: one argument holds at most 128 KiB (MAX_ARG_STRLEN).

The agent's guest-exec takes standard input only up front: whatever arrives on this process's
stdin before the program starts is not forwarded (the program's stdin is empty), and its output
arrives when it ends."""
from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time

# A command of megabytes crosses the agent's serial port slowly (seconds under TCG).
START_TIMEOUT = 60


def main(argv: list[str]) -> int:
    import libvirt
    import libvirt_qemu
    libvirt.registerErrorHandler(lambda *_: None, None)  # errors are reported below, not printed by libvirt
    with os.fdopen(int(argv[1]), "rb") as f:
        req = json.loads(f.read())
    conn = libvirt.open(req["uri"])
    dom = conn.lookupByName(req["domain"])

    def agent(cmd: dict, timeout: int = 10) -> dict:
        return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps(cmd), timeout, 0))["return"]

    program = req["program"]
    try:
        pid = json.loads(libvirt_qemu.qemuAgentCommand(dom, req["command"], START_TIMEOUT, 0))["return"]["pid"]
    except libvirt.libvirtError as exc:
        sys.stderr.write(f"vws: the guest agent could not start {program}: {exc.get_error_message()}\n")
        return 127
    stopping = {"signal": 0}

    def forward(signum, _frame):  # the manager kills the session on cancel: end the guest's program too
        stopping["signal"] = signum
    signal.signal(signal.SIGTERM, forward)
    delay = 0.01
    while True:
        status = agent({"execute": "guest-exec-status", "arguments": {"pid": pid}})
        if status.get("exited"):
            break
        if stopping["signal"]:
            try:
                agent({"execute": "guest-exec", "arguments": {"path": "/bin/kill", "arg": ["-9", str(pid)]}})
            except libvirt.libvirtError:
                pass
            return 128 + stopping["signal"]
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    for key, stream in (("out-data", sys.stdout.buffer), ("err-data", sys.stderr.buffer)):
        if status.get(key):
            stream.write(base64.b64decode(status[key]))
            stream.flush()
    if status.get("out-truncated") or status.get("err-truncated"):
        sys.stderr.write("vws: the guest agent truncated the program's output (it keeps at most 16 MB)\n")
    if "signal" in status:
        return 128 + int(status["signal"])
    return int(status.get("exitcode", 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
