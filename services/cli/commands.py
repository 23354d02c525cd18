"""How a command group adds its commands to `vws`'s parser: each command module has one
`add_parsers(command)`, and `command(name, fn, help, read=...)` adds one (sub-)command."""
from __future__ import annotations

import argparse
from typing import Callable, Protocol


class Adder(Protocol):
    def __call__(self, name: str, fn: Callable | None, help: str, read: bool = False
                 ) -> argparse.ArgumentParser: ...


def adder(sub) -> Adder:
    """`command(name, fn, help, read=False)` over argparse sub-parsers: `fn` runs the command,
    `read` gives it -o/--output (table or json)."""
    def command(name: str, fn: Callable | None, help: str, read: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        if fn is not None:
            c.set_defaults(fn=fn)
        if read:
            c.add_argument("-o", "--output", choices=["table", "json"], default="table",
                           help="table for people (default), json for programs")
        return c
    return command


def group(command: Adder, name: str, help: str, dest: str, metavar: str) -> Adder:
    """A command made of sub-commands (`vws image add`): the adder of its sub-commands."""
    sub = command(name, None, help).add_subparsers(dest=dest, metavar=metavar)
    sub.required = True
    return adder(sub)
