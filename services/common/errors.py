"""Domain errors. Each knows its gRPC status; vws.common.server maps them onto the wire in
one place (with google.rpc details), and nothing else reaches a client."""
from __future__ import annotations

import grpc


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
        text = "; ".join(f"{f}: {d}" if f else d for f, d in self.violations)
        super().__init__(text)


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


_BY_STATUS = {c.grpc_status_code: c for c in (
    NotFound, AlreadyExists, FailedPrecondition, ResourceExhausted, Unavailable, Unimplemented, PermissionDenied,
    Aborted, DataLoss, Internal)}


def for_status(code: grpc.StatusCode, message: str) -> VwsError:
    """The domain error for a status another service answered (to carry it on unchanged)."""
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message)
    return _BY_STATUS.get(code, Internal)(message)
