"""Where the CLI connects and how it reads what comes back, for every command module: the
factory's address and the services behind it (Connection), the user's credential, the one
line a failed call ends as, waiting for a workspace to reach a state, and the names and
values commands take and show."""
from __future__ import annotations

import contextlib
import getpass
import os
import pathlib
import tomllib

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from . import credentials
from . import output as out
from ..common import clients, config, errors, kinds, names
from ..v1 import access_pb2, factory_pb2, repository_pb2, workspace_pb2

W = workspace_pb2.Workspace
# Each kind of the kinds table on the wire, named as vws.common.converters names it (whose imports
# of the auth package would add a third of a second to every command).
_WIRE_KIND = {kind: workspace_pb2.WorkspaceSpec.Kind.Value(f"KIND_{kind.value}") for kind in kinds.TABLE}
_TRAITS_OF_WIRE = {value: kinds.of(kind) for kind, value in _WIRE_KIND.items()}
TIMEOUT = 30.0
# Calls that may wait on a guest (shut down, save or restore its memory) or copy an image.
LONG_TIMEOUT = 300.0
DEFAULT_FACTORY = "127.0.0.1:7702"


class CliError(Exception):
    """A failure to print as one line; exit code attached."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- where to connect
def data_dir(args) -> pathlib.Path:
    chosen = getattr(args, "data_dir", None) or getattr(args, "global_data_dir", None)
    return pathlib.Path(chosen).expanduser() if chosen else config.default_data_dir()


def _config_endpoint(args) -> str:
    path = os.environ.get("VWS_CONFIG") or str(data_dir(args) / "vws.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        return ""
    except tomllib.TOMLDecodeError as exc:
        raise CliError(f"{path} is not valid TOML: {exc}")
    return str(doc.get("cli", {}).get("endpoint", "") or doc.get("endpoint", ""))


def factory_address(args) -> tuple[str, str]:
    """(address, where it came from): --endpoint, VWS_ENDPOINT, the config file, then the
    stack that `vws up` started (its run file), then the default port."""
    if getattr(args, "endpoint", None):
        return args.endpoint, "--endpoint"
    if os.environ.get("VWS_ENDPOINT"):
        return os.environ["VWS_ENDPOINT"], "VWS_ENDPOINT"
    configured = _config_endpoint(args)
    if configured:
        return configured, "the config file"
    run = config.read_run_file(data_dir(args), "factory")
    if run and run.get("address"):
        return run["address"], f"the stack in {data_dir(args)}"
    return DEFAULT_FACTORY, "the default"


class Connection:
    def __init__(self, args):
        self.args = args
        self.factory_address, self.source = factory_address(args)
        self._repository_address = ""

    def ready(self) -> None:
        """Before the first call: the user's credential found and the process's calls set up."""
        use_credentials(self.args)

    def unreachable(self, what: str, address: str) -> CliError:
        return CliError(f"cannot reach the {what} at {address} (from {self.source}); is the stack running? "
                        "Start it with `vws up`, or point at it with --endpoint or VWS_ENDPOINT", 3)

    def factory(self):
        self.ready()
        return clients.factory(self.factory_address)

    def site(self) -> factory_pb2.GetSiteInfoResponse:
        self.ready()
        with reaching(self.unreachable("factory", self.factory_address)):
            return clients.factory(self.factory_address).GetSiteInfo(factory_pb2.GetSiteInfoRequest(), timeout=TIMEOUT)

    def repository_address(self) -> str:
        self.ready()
        if not self._repository_address:
            run = config.read_run_file(data_dir(self.args), "repository")
            if self.source.startswith("the stack") and run and run.get("address"):
                self._repository_address = run["address"]
            else:
                self._repository_address = self.site().repository_address
        return self._repository_address

    def repository(self):
        return clients.repository(self.repository_address())

    def identity(self) -> str:
        """Who the site takes this user for (the local user name on a plain-text stack)."""
        try:
            caller = self.access().GetCaller(access_pb2.GetCallerRequest(), timeout=TIMEOUT).caller
        except grpc.RpcError:
            return getpass.getuser()
        return caller.identity if caller.credential_kind else getpass.getuser()

    def access(self):
        return clients.access(self.repository_address())

    def get(self, name: str) -> W:
        return self.repository().GetWorkspace(repository_pb2.GetWorkspaceRequest(name=name), timeout=TIMEOUT).workspace

    def manager_unreachable(self, ws: W, address: str) -> CliError:
        return CliError(f"cannot reach {ws.endpoint.manager} at {address}, which holds {ws.name}", 3)

    def manager_of(self, ws: W):
        """The manager holding the workspace, at the address it last registered."""
        if not ws.endpoint.manager:
            raise CliError(f"{ws.name} is not on any manager yet (it is {state_name(ws.state)})")
        address = ws.endpoint.manager_address
        try:
            r = self.repository().ListManagers(repository_pb2.ListManagersRequest(page_size=1000), timeout=TIMEOUT)
            address = next((m.address for m in r.managers if m.name == ws.endpoint.manager), address)
        except grpc.RpcError:
            pass
        return clients.manager(address), address


def use_credentials(args) -> credentials.Choice:
    """Finds the user's credential and sets up the process's calls with it (once per command)."""
    if getattr(args, "credential", None) is None:
        args.credential = True  # set first: Connection(args) below must not come back here
        try:
            args.credential = credentials.configure(args, data_dir(args),
                                                    repository_address=Connection(args).repository_address)
        except errors.VwsError as exc:
            if factory_address(args)[1] == "the default" and config.read_run_file(data_dir(args), "factory") is None:
                raise CliError(f"{exc.message}. No stack runs in {data_dir(args)}: start one with `vws up`, or point "
                               "at a site with --endpoint (or VWS_ENDPOINT) and --ca", 3) from None
            raise
    return args.credential


# --------------------------------------------------------------------------- failed calls
# Every failed call the CLI reads goes through these: what it stands for is errors.from_rpc_error's answer.
def describe_rpc_error(exc: grpc.RpcError) -> str:
    """The one line a failed call ends as: its status, what the service said (its field
    violations when they say more) and, when TLS refused the connection, what to check."""
    error = errors.from_rpc_error(exc)
    extra = []
    try:
        status = rpc_status.from_call(exc)
        for d in status.details if status else []:
            if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                d.Unpack(br)
                extra += [f"{v.field}: {v.description}" for v in br.field_violations]
    except Exception:  # noqa: BLE001 - details are a bonus; the message stands alone
        pass
    text = error.message
    if extra and not all(e in text for e in extra):
        text = "; ".join(extra)
    if isinstance(error, errors.Unavailable):
        text += credentials.explain_unavailable(error.message)
    return f"{error.grpc_status_code.name}: {text}"


def exit_code(exc: grpc.RpcError) -> int:
    """2 for a call refused for its arguments (as for a usage mistake), else 1."""
    return 2 if isinstance(errors.from_rpc_error(exc), errors.InvalidArgument) else 1


@contextlib.contextmanager
def reaching(failure: CliError, unless: str = ""):
    """A call inside that finds its service UNAVAILABLE ends as `failure` (whom it could not
    reach and what to do), unless the service's message starts with `unless` (the service
    answered, about a third party); any other failure goes on as it is."""
    try:
        yield
    except grpc.RpcError as exc:
        error = errors.from_rpc_error(exc)
        if isinstance(error, errors.Unavailable) and not (unless and error.message.startswith(unless)):
            raise failure from None
        raise


# --------------------------------------------------------------------------- waiting
def wait_for(conn: Connection, name: str, targets: set[int], timeout: float, bar: "out.ProgressBar | None" = None
             ) -> W:
    """Follows the workspace's changes (WatchWorkspace) until it reaches a target state; with a
    bar, shows the progress of long work (an image copy while PROPAGATING) as it goes."""
    call = conn.repository().WatchWorkspace(repository_pb2.WatchWorkspaceRequest(name=name), timeout=timeout)
    last = None
    try:
        for msg in call:
            last = msg.workspace
            if bar is not None:
                bar.show(last.progress if last.state == W.STATE_PROPAGATING and last.HasField("progress") else None)
            if last.state in targets:
                return last
            if last.state in (W.STATE_FAILED, W.STATE_TERMINATED) and last.state not in targets:
                raise CliError(f"{name} is {state_name(last.state)}: {last.state_message}")
    except grpc.RpcError as exc:
        if isinstance(errors.from_rpc_error(exc), errors.DeadlineExceeded):
            raise CliError(f"gave up waiting for {name} after {timeout:g}s; it is "
                           f"{state_name(last.state) if last else 'unknown'}", 4) from None
        raise
    finally:
        if bar is not None:
            bar.show(None)
    if last is None:
        raise CliError(f"the repository ended the watch of {name} without an answer")
    return last


# --------------------------------------------------------------------------- names and values
def pairs(items: list[str], flag: str, form: str = "NAME=VALUE") -> dict[str, str]:
    """Repeated `--flag KEY=VALUE` options as a dict."""
    found = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"{flag} {item!r}: write it as {form}", 2)
        found[key] = value
    return found


def state_name(value: int) -> str:
    return out.enum_name(W.State, value, "STATE_")


def wire_kind(name: str | None, image: bool = False) -> int:
    """The kind the command line names, on the wire; no name: the default kind (for a request
    that names an `image` or not)."""
    return _WIRE_KIND[kinds.by_name(name).kind if name else kinds.default(image=image)]


def kind_traits(value: int) -> kinds.Traits | None:
    """The traits of a kind on the wire; None for one this build does not know."""
    return _TRAITS_OF_WIRE.get(value)


def host_noun(kind: int) -> str:
    """What realises a workspace of this kind on its host, as the CLI names it."""
    return (kind_traits(kind) or kinds.of(kinds.DEFAULT)).host_noun


def kind_name(value: int) -> str:
    traits = kind_traits(value)
    return traits.name if traits else "?"


def workspace_name(text: str) -> str:
    name = names.normalise_workspace_name(text)
    names.parse_workspace_name(name, "NAME")
    return name


def image_name(text: str) -> str:
    """`busybox` or `images/busybox` -> `images/busybox`."""
    return names.image_name(names.parse_image_name(text, "NAME"))
