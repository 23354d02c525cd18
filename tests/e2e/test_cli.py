"""End to end through the `vws` command line: `vws up` in a data directory, the walk-through of
the README, and `vws down`. Other commands find the stack untold (VWS_DATA_DIR only)."""
from __future__ import annotations

import json
import pwd


def test_walk_through(cli):
    up = cli("up", "--repository-listen", "127.0.0.1:0", "--factory-listen", "127.0.0.1:0",
             "--manager-listen", "127.0.0.1:0", check=0)
    assert "stack up" in up.stdout
    assert "already running" in cli("up", check=0).stdout
    assert json.loads(cli("status", "-o", "json", check=0).stdout)["services"]["factory"]["state"] == "serving"

    created = json.loads(cli("create", "--memory", "256M", "--cpu", "500m", "--lifetime", "2h",
                             "--env", "GREETING=hello", "--label", "purpose=e2e", "--wait", "-o", "json",
                             check=0).stdout)
    name = created["workspace"]["name"]
    short = name.split("/", 1)[1]
    assert created["workspace"]["state"] == "STATE_RUNNING"
    assert created["endpoint"]["manager"] == f"managers/e2e-{cli.tag}"

    ex = cli("exec", short, "--", "sh", "-c", 'echo "$GREETING from $(id -un)"; echo err >&2; exit 5')
    assert ex.returncode == 5
    assert ex.stdout == f"hello from ve{cli.tag}-{short}\n" and ex.stderr == "err\n"
    assert cli("exec", short, "--", "tr", "a-z", "A-Z", input="piped\n", check=0).stdout == "PIPED\n"

    shown = json.loads(cli("show", short, "-o", "json", check=0).stdout)
    assert shown["spec"]["resources"]["memory_bytes"] == str(256 * 1024 ** 2)
    human = cli("show", short, check=0).stdout
    assert "RUNNING" in human and "256M" in human and "500m" in human
    listed = json.loads(cli("list", "--label", "purpose=e2e", "-o", "json", check=0).stdout)
    assert [w["name"] for w in listed["workspaces"]] == [name]
    assert short in cli("list", check=0).stdout
    managers = json.loads(cli("managers", "-o", "json", check=0).stdout)["managers"]
    assert managers[0]["state"] == "STATE_AVAILABLE"

    for command, state in (("pause", "PAUSED"), ("resume", "RUNNING"), ("stop", "READY"), ("start", "RUNNING")):
        assert state in cli(command, short, check=0).stdout
    bad = cli("start", short)
    assert bad.returncode != 0 and "FAILED_PRECONDITION" in bad.stderr and "RUNNING" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1

    assert "terminates" in cli("extend", short, "1h", check=0).stdout
    too_far = cli("extend", short, "60d")
    assert too_far.returncode != 0 and "extend_by" in too_far.stderr and "at most" in too_far.stderr

    events = json.loads(cli("events", short, "-o", "json", check=0).stdout)["events"]
    assert events[0]["state"] == "STATE_PENDING"

    assert "TERMINATED" in cli("destroy", short, "--wait", check=0).stdout
    assert not any(p.pw_name.startswith(f"ve{cli.tag}-") for p in pwd.getpwall())

    down = cli("down", check=0)
    assert "stopped" in down.stdout


def test_errors_are_one_line_with_the_field(cli):
    cli("up", "--repository-listen", "127.0.0.1:0", "--factory-listen", "127.0.0.1:0",
        "--manager-listen", "127.0.0.1:0", check=0)
    for args, needle in ((("create", "--memory=-1G"), "--memory"),
                         (("create", "--memory"), "--memory"),
                         (("create", "--kind", "pod"), "--kind"),
                         (("create", "--memory", "10T"), "memory_bytes"),
                         (("create", "--kind", "vm"), "workspace.spec.software.image"),
                         (("create", "--lifetime", "400d"), "lifetime"),
                         (("show", "wnothere1234"), "NOT_FOUND"),
                         (("show", "Bad/Name"), "NAME"),
                         (("exec", "wnothere1234", "--", "true"), "NOT_FOUND"),
                         (("create", "--setup-script", "exit 9"), "setup_script")):
        r = cli(*args)
        assert r.returncode != 0, args
        if "NOT_FOUND" not in needle:  # bad input, found by the CLI or by a service: exit 2
            assert r.returncode == 2, (args, r.returncode, r.stderr)
        assert needle in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert json.loads(cli("list", "--all", "-o", "json", check=0).stdout)["workspaces"] == []
    assert not any(p.pw_name.startswith(f"ve{cli.tag}-") for p in pwd.getpwall())


def test_commands_say_how_to_start_the_stack_when_none_runs(cli):
    r = cli("list")
    assert r.returncode == 3 and "vws up" in r.stderr and "Traceback" not in r.stderr


def test_sandbox_limits_and_usage(cli):
    cli("up", "--repository-listen", "127.0.0.1:0", "--factory-listen", "127.0.0.1:0",
        "--manager-listen", "127.0.0.1:0", check=0)
    created = json.loads(cli("create", "--kind", "sandbox", "--memory", "128M", "--cpu", "500m", "--disk", "64M",
                             "--bandwidth", "10M", "--processes", "64", "--wait", "-o", "json", check=0).stdout)
    short = created["workspace"]["name"].split("/", 1)[1]
    assert cli("exec", short, "--", "hostname", check=0).stdout.strip() == short
    shown = cli("show", short, check=0).stdout
    for needle in ("enforced by", "bubblewrap", "memory limit", "128M", "50000us per 100000us", "processes"):
        assert needle in shown, (needle, shown)
    usage = json.loads(cli("usage", short, "-o", "json", check=0).stdout)
    assert usage["name"] == created["workspace"]["name"]
    assert "usage" in cli("usage", "--help", check=0).stdout.lower()
    cli("destroy", short, "--wait", check=0)
    final = json.loads(cli("usage", short, "-o", "json", check=0).stdout)
    assert final.get("final") is True
