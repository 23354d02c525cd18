"""`vws exec`: run a program in a workspace, its standard streams forwarded, its exit code ours."""
from __future__ import annotations

import argparse
import os
import sys

from .connection import CliError, Connection, pairs, reaching, workspace_name
from ..v1 import manager_pb2


def cmd_exec(args) -> int:
    conn = Connection(args)
    name = workspace_name(args.name)
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise CliError("give the program to run: vws exec NAME -- CMD [ARGS...]", 2)
    env = pairs(args.env, "--env")
    ws = conn.get(name)
    stub, address = conn.manager_of(ws)
    first = manager_pb2.ExecRequest(name=name, argv=argv, environment=env, working_directory=args.workdir or "")
    stdin_is_live = not args.no_stdin

    def requests():
        if not stdin_is_live:
            first.close_stdin = True
            yield first
            return
        yield first
        fd = sys.stdin.fileno() if sys.stdin else -1
        while True:
            try:
                chunk = os.read(fd, 64 * 1024) if fd >= 0 else b""
            except OSError:
                chunk = b""
            if not chunk:
                yield manager_pb2.ExecRequest(close_stdin=True)
                return
            yield manager_pb2.ExecRequest(stdin=chunk)

    call = stub.Exec(requests())
    code = 0
    try:
        with reaching(conn.manager_unreachable(ws, address)):
            for msg in call:
                which = msg.WhichOneof("output")
                if which == "stdout":
                    sys.stdout.buffer.write(msg.stdout)
                    sys.stdout.buffer.flush()
                elif which == "stderr":
                    sys.stderr.buffer.write(msg.stderr)
                    sys.stderr.buffer.flush()
                elif which == "exit_status":
                    code = msg.exit_status.code
    except KeyboardInterrupt:
        call.cancel()
        return 130
    return code


def add_parsers(command) -> None:
    c = command("exec", cmd_exec, "run a program in a workspace; exits with its code")
    c.add_argument("name", metavar="NAME")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    c.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("--workdir", help="working directory (default: the home)")
    c.add_argument("--no-stdin", action="store_true", help="do not forward standard input")
