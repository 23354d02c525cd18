"""`vws`: the command line for Virtual Workspaces. This module assembles the parser from the
command groups (each module adds its own commands) and runs the one asked for.

Every failure ends as one line on stderr and a non-zero exit; a traceback never reaches the
user (VWS_DEBUG=1 shows it, for us)."""
from __future__ import annotations

import argparse
import os
import sys

import grpc

from . import access, commands, execute, fftbench, images, services, stack, usage, workspaces
from .connection import CliError, describe_rpc_error, exit_code
from ..common import config, errors

# In the order `vws --help` lists them.
GROUPS = (services, stack, workspaces, usage, images, fftbench, access, execute)


class Parser(argparse.ArgumentParser):
    """Usage mistakes end as one line too, with where to look."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="vws", description="Virtual Workspaces: execution environments on demand.")
    p.add_argument("--endpoint", help="the factory, host:port (default: $VWS_ENDPOINT, the config file, "
                                      "then the stack `vws up` started)")
    p.add_argument("--data-dir", dest="global_data_dir", metavar="DIR",
                   help=f"the stack's data directory (default: $VWS_DATA_DIR or {config.default_data_dir()})")
    g = p.add_argument_group("credentials (default: found as `vws whoami` shows; see docs/security.md)")
    g.add_argument("--cert", help="your certificate (PEM; mutual TLS), with --key (default: $X509_USER_CERT)")
    g.add_argument("--key", help="its private key (default: the --cert file, or $X509_USER_KEY)")
    g.add_argument("--proxy", help="a VOMS proxy (voms-proxy-init makes one; default: $X509_USER_PROXY, then "
                                   "/tmp/x509up_u<uid>), logged in once per session")
    g.add_argument("--token", help="a WLCG bearer token, or @FILE (default: $BEARER_TOKEN, $BEARER_TOKEN_FILE)")
    g.add_argument("--ca", help="the site's CA certificate, to check the services with (default: $VWS_CA, then "
                                "DATA_DIR/pki/ca.pem)")
    g.add_argument("--insecure", action="store_true", help="plain text, for a stack started with --insecure "
                                                          "(loopback only)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    command = commands.adder(sub)
    for group in GROUPS:
        group.add_parsers(command)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args) or 0
    except CliError as exc:
        print(f"vws: {exc}", file=sys.stderr)
        return exc.code
    except errors.VwsError as exc:
        print(f"vws: {type(exc).__name__.replace('InvalidArgument', 'invalid argument')}: {exc.message}"
              if not isinstance(exc, errors.InvalidArgument) else f"vws: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, errors.InvalidArgument) else 1
    except grpc.RpcError as exc:
        print(f"vws: {describe_rpc_error(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - never a traceback for a user
        if os.environ.get("VWS_DEBUG"):
            raise
        print(f"vws: unexpected error: {type(exc).__name__}: {exc} (VWS_DEBUG=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
