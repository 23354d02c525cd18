"""Domain errors. Each knows its gRPC status; vws.common.server maps them onto the wire in
one place (with google.rpc details), and nothing else reaches a client."""
from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2


ELLIPSIS = "…"
QUOTED = 40  # characters of a value a message echoes


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` bytes of UTF-8 (whole characters), an ellipsis marking the cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit - len(ELLIPSIS.encode())].decode("utf-8", "ignore") + ELLIPSIS


def quote(value: str, limit: int = QUOTED) -> str:
    """`value` quoted for a message: a client may send megabytes, a message echoes a short prefix."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + ELLIPSIS


def summary(violations: list[tuple[str, str]]) -> str:
    """The one-line message (field: what is wrong; ...) that stands for `violations`."""
    return "; ".join(f"{f}: {d}" if f else d for f, d in violations)


class VwsError(Exception):
    grpc_status_code = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(VwsError):
    """A field is wrong. Carries (field path, what is wrong and how to fix it) pairs."""
    grpc_status_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: list[tuple[str, str]] | str, field: str | None = None):
        if isinstance(violations, str):
            violations = [(field or "", violations)]
        self.violations = list(violations)
        super().__init__(summary(self.violations))


class NotFound(VwsError):
    grpc_status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(VwsError):
    grpc_status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(VwsError):
    grpc_status_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(VwsError):
    """No room. Carries (subject, description) quota violations."""
    grpc_status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.violations = violations or []


class Unavailable(VwsError):
    grpc_status_code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(VwsError):
    grpc_status_code = grpc.StatusCode.UNIMPLEMENTED


class PermissionDenied(VwsError):
    grpc_status_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(VwsError):
    """The caller's credential is missing, malformed, untrusted or expired."""
    grpc_status_code = grpc.StatusCode.UNAUTHENTICATED


class Aborted(VwsError):
    grpc_status_code = grpc.StatusCode.ABORTED


class Cancelled(VwsError):
    grpc_status_code = grpc.StatusCode.CANCELLED


class DataLoss(VwsError):
    """Data did not match its digest (a chunk on the wire, a file at rest)."""
    grpc_status_code = grpc.StatusCode.DATA_LOSS


class Internal(VwsError):
    grpc_status_code = grpc.StatusCode.INTERNAL


class BackendError(Internal):
    """A host operation (useradd, cgroup write, ...) failed."""


class DeadlineExceeded(VwsError):
    """A call did not finish in the time it was given."""
    grpc_status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class OutOfRange(VwsError):
    grpc_status_code = grpc.StatusCode.OUT_OF_RANGE


class Unknown(VwsError):
    """A peer answered a status it did not explain."""
    grpc_status_code = grpc.StatusCode.UNKNOWN


def _leaves(cls: type[VwsError]):
    for sub in cls.__subclasses__():
        yield sub
        yield from _leaves(sub)


# status -> the domain error that stands for it (the first class naming it; subclasses such as
# BackendError narrow one, they do not stand for it).
_BY_STATUS: dict[grpc.StatusCode, type[VwsError]] = {}
for _cls in _leaves(VwsError):
    _BY_STATUS.setdefault(_cls.grpc_status_code, _cls)


def for_status(code: grpc.StatusCode, message: str) -> VwsError:
    """The domain error for a status another service answered (to carry it on unchanged)."""
    return _BY_STATUS.get(code, Unknown)(message)


def from_rpc_error(exc: grpc.RpcError) -> VwsError:
    """The domain error a received gRPC error stands for, every status included, so callers
    catch domain errors and never read a grpc.RpcError by hand."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    error = for_status(code or grpc.StatusCode.UNKNOWN, details or "")
    violations = _violations(exc)
    if violations and hasattr(error, "violations"):  # carried on, the next hop answers the same details
        error.violations = violations
    error.__cause__ = exc
    return error


def _violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    """The field (BadRequest) or quota (QuotaFailure) violations the status's details carry."""
    trailing = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    raw = next((value for key, value in trailing or () if key == "grpc-status-details-bin"), None)
    try:
        details = status_pb2.Status.FromString(raw).details if raw else ()
    except DecodeError:
        return []
    out: list[tuple[str, str]] = []
    for packed in details:
        if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            packed.Unpack(request)
            out += [(v.field, v.description) for v in request.field_violations]
        elif packed.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            packed.Unpack(quota)
            out += [(v.subject, v.description) for v in quota.violations]
    return out
