"""`vws repository`, `vws factory`, `vws manager`: run one service in this process (as `vws up`
does for each, and as a host runs them)."""
from __future__ import annotations

import importlib
import logging
import os

from ..common import config

SERVERS = {"repository": "vws.repository.server", "factory": "vws.factory.server", "manager": "vws.manager.server"}


def run_service(section: str):
    def runner(args) -> int:
        if not args.data_dir and args.global_data_dir:
            args.data_dir = args.global_data_dir
        flags = {k: v for k, v in vars(args).items() if k not in ("fn", "command", "endpoint", "global_data_dir",
                                                                   "log_level")}
        settings = config.load(section, flags)
        setup_logging(args.log_level)
        # Loaded here only: a server's dependencies (SQLAlchemy, libvirt) would slow every other command.
        return importlib.import_module(SERVERS[section]).run(settings)
    return runner


def setup_logging(level: str | None) -> None:
    level = (level or os.environ.get("VWS_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def add_parsers(command) -> None:
    for section, help in (("repository", "run the Repository service (system of record)"),
                          ("factory", "run the Factory service (admission and placement)"),
                          ("manager", "run a Manager service (realises workspaces on this host)")):
        c = command(section, run_service(section), help)
        config.add_arguments(c, section)
        c.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
