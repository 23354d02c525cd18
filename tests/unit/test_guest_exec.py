"""A VM exec's request reaches its helper process (guest_exec) in a file, not as an argument: one
argument holds at most 128 KiB (MAX_ARG_STRLEN), so 150 KiB of argv and environment, which the
exec limits accept, failed E2BIG (issue 17, item 3). A request the guest agent cannot take is
INVALID_ARGUMENT before anything is spawned. libvirt is faked here; test_vms runs the real one."""
from __future__ import annotations

import base64
import json
import os
import sys
import types

import pytest

from vws.common import errors
from vws.manager.backends.base import ExecOptions, HostHandle
from vws.manager.backends.vm import agent, guest_exec

HANDLE = HostHandle("w1", "vws-w1")


@pytest.fixture
def fake_libvirt(monkeypatch):
    """libvirt whose guest agent runs nothing: it records the guest-exec command and answers
    with the byte counts of its argv and environment as the program's output."""
    sent = []

    class LibvirtError(Exception):
        pass

    def command(dom, cmd, timeout, flags):
        c = json.loads(cmd)
        sent.append(c)
        if c["execute"] == "guest-exec":
            return json.dumps({"return": {"pid": 7}})
        ran = sent[0]["arguments"]
        out = f"{sum(map(len, ran['arg']))} {sum(map(len, ran['env']))}".encode()
        return json.dumps({"return": {"exited": True, "exitcode": 0, "out-data": base64.b64encode(out).decode()}})

    conn = types.SimpleNamespace(lookupByName=lambda name: name)
    monkeypatch.setitem(sys.modules, "libvirt", types.SimpleNamespace(
        libvirtError=LibvirtError, registerErrorHandler=lambda *a: None, open=lambda uri: conn))
    monkeypatch.setitem(sys.modules, "libvirt_qemu", types.SimpleNamespace(qemuAgentCommand=command))
    return sent


def spawn_in_process(monkeypatch, capfdbinary, options: ExecOptions) -> tuple[list[str], int, bytes]:
    """GuestAgent.spawn with the helper run in this process: (its argv, exit code, stdout)."""
    ran = {}

    def popen(argv, pass_fds=(), **_):
        ran["argv"] = argv
        ran["code"] = guest_exec.main(["guest_exec", str(os.dup(pass_fds[0]))])
        return ran

    monkeypatch.setattr(agent.subprocess, "Popen", popen)
    monkeypatch.setattr(guest_exec.signal, "signal", lambda *a: None)  # pytest's own handlers stay
    agent.GuestAgent("qemu:///test", 1.0).spawn(HANDLE, options)
    return ran["argv"], ran["code"], capfdbinary.readouterr().out


def test_a_request_over_one_arguments_limit_reaches_the_guest_whole(monkeypatch, capfdbinary, fake_libvirt):
    options = ExecOptions(["sh", "-c", "echo", "a" * 75_000], {"BIG": "b" * 75_000, "SNOW": "☃"}, "")
    argv, code, out = spawn_in_process(monkeypatch, capfdbinary, options)
    assert sum(len(a) for a in argv) < 1000  # the request is not in the helper's arguments
    assert code == 0
    args, env = map(int, out.split())
    assert args == len("-c") + len("echo") + 75_000
    sent = fake_libvirt[0]["arguments"]
    assert sent["path"] == "sh" and "BIG=" + "b" * 75_000 in sent["env"] and "SNOW=☃" in sent["env"]


def test_a_request_the_guest_agent_cannot_take_is_the_callers_to_fix(monkeypatch):
    monkeypatch.setattr(agent.subprocess, "Popen", lambda *a, **k: pytest.fail("spawned"))
    # Control characters are escaped in the agent's JSON: 6 bytes each.
    options = ExecOptions(["sh"] + ["\x01" * 40_000], {}, "")
    with pytest.raises(errors.InvalidArgument) as e:
        agent.GuestAgent("qemu:///test", 1.0).spawn(HANDLE, options)
    assert e.value.violations[0][0] == "argv" and str(agent.MAX_COMMAND_BYTES) in e.value.message
    options = ExecOptions(["sh"], {"E": "\x01" * 40_000}, "")
    with pytest.raises(errors.InvalidArgument) as e:
        agent.GuestAgent("qemu:///test", 1.0).spawn(HANDLE, options)
    assert e.value.violations[0][0] == "environment"


def test_a_workspace_environment_must_leave_the_guest_agent_room_for_programs():
    """Such a workspace was made, and every exec in it was then refused."""
    agent.check_environment({"A": "a" * 60_000})
    with pytest.raises(errors.InvalidArgument) as e:
        agent.check_environment({"A": "a" * 60_000, "B": "b" * 60_000})
    assert e.value.violations[0][0] == "workspace.spec.software.environment"
    assert str(agent.MAX_COMMAND_BYTES // 2) in e.value.message
