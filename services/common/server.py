"""What every vws gRPC server shares: one interceptor that maps domain errors onto gRPC
statuses (with google.rpc details), health checking, reflection, and a graceful stop."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import signal
import threading
import uuid
from typing import Callable, Iterable

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from grpc_status import rpc_status

from . import errors, tls
from .auth.gate import Gate

log = logging.getLogger("vws.server")


# What a status may carry, in bytes of UTF-8: the message and its details travel in trailers, and
# gRPC refuses metadata past 8 KB (16 KB hard), answering RESOURCE_EXHAUSTED instead of the status.
MESSAGE_LIMIT = 1000
FIELD_LIMIT = 100
DESCRIPTION_LIMIT = 400  # room for a path and two digests, as a digest mismatch names them
# All violations together, as a client prints them (protobuf text: each in its braces, a byte
# past ASCII as an octal escape), stay under 1 KB; those past it are counted, not sent.
VIOLATIONS_LIMIT = 800
VIOLATION_FRAME = 48  # `field_violations {\n  field: ""\n  description: ""\n}\n`


def _printed(text: str) -> int:
    return sum(4 if b > 0x7e or b < 0x20 else 2 if b in b'"\\' else 1 for b in text.encode())


def bounded(violations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`violations` as sent: each cut short, and those past the budget counted in a last one."""
    out: list[tuple[str, str]] = []
    size = 0
    for i, (field, description) in enumerate(violations):
        pair = errors.clip(field, FIELD_LIMIT), errors.clip(description, DESCRIPTION_LIMIT)
        size += VIOLATION_FRAME + _printed(pair[0]) + _printed(pair[1])
        if size > VIOLATIONS_LIMIT:
            out.append(("", f"and {len(violations) - i} more"))
            break
        out.append(pair)
    return out


def status_for(exc: errors.VwsError) -> grpc.Status:
    """The one place a domain error becomes a wire status, with its rich details, all bounded
    whatever the error quotes."""
    code = exc.grpc_status_code
    violations = bounded(getattr(exc, "violations", None) or [])
    message = errors.summary(violations) if isinstance(exc, errors.InvalidArgument) else exc.message
    status = status_pb2.Status(code=code.value[0], message=errors.clip(message, MESSAGE_LIMIT))
    detail = None
    if isinstance(exc, errors.InvalidArgument):
        detail = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations])
    elif isinstance(exc, errors.ResourceExhausted) and violations:
        detail = error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=s, description=d) for s, d in violations])
    if detail is not None:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def _abort_for(exc: BaseException, context: grpc.ServicerContext, method: str):
    if isinstance(exc, errors.VwsError):
        context.abort_with_status(status_for(exc))
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        # A downstream service's answer travels on unchanged, details included.
        trailing = tuple(exc.trailing_metadata() or ())
        context.abort_with_status(_PassThrough(exc.code(), exc.details() or "", trailing))
    ref = uuid.uuid4().hex[:8]
    log.error("unexpected error in %s (ref %s)", method, ref, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has the details (ref {ref})")


class _PassThrough(grpc.Status):
    def __init__(self, code, details, trailing_metadata):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


def _outcome(exc: BaseException | None) -> tuple[str, str]:
    """(status code name, message) a call ended with, for its audit entry."""
    if exc is None:
        return "OK", ""
    if isinstance(exc, errors.VwsError):
        return exc.grpc_status_code.name, status_for(exc).details  # what the client was told
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code().name, exc.details() or ""
    return "INTERNAL", "internal error"


class _Undecodable(errors.InvalidArgument):
    """What bytes that are not the request message deserialize to: gRPC answers INTERNAL for a
    deserializer's exception, so the handler raises this instead, as the client's error."""


def _tolerant(deserializer):
    """`deserializer`, answering undecodable bytes with an _Undecodable instead of raising."""
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)  # Message.FromString
    what = getattr(descriptor, "full_name", "request message")

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except DecodeError as exc:
            reason = str(exc).rpartition(": ")[2] or "it does not parse"
            return _Undecodable(f"the request is not a valid {what} ({reason}); send a serialised {what}")
    return deserialize


def _decoded(requests):
    """A request stream that raises at the first message that did not decode."""
    for request in requests:
        if isinstance(request, _Undecodable):
            raise request
        yield request


class ErrorInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so that no traceback ever reaches a client; with a gate, every call
    is first authenticated and authorised, and state-changing calls are audited."""

    def __init__(self, gate: Gate | None = None):
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._gate = gate

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        self._wrapped[method] = wrapped = self._wrap(handler, method, self._gate)
        return wrapped

    @staticmethod
    def _wrap(handler, method: str, gate: Gate | None):
        streaming_requests = handler.request_streaming

        def enter(request, context):
            # an undecodable request is refused before the gate: it names no target to authorise
            if streaming_requests:
                request = _decoded(request)
            elif isinstance(request, _Undecodable):
                raise request
            if gate is None:
                return request, None
            if streaming_requests:
                request = iter(request)
                first = next(request, None)
                # the servicer reads the stream from its first message on, as it came
                return itertools.chain(() if first is None else (first,), request), gate.enter(method, first, context)
            return request, gate.enter(method, request, context)

        def leave(entered, exc, context, answer=None):
            if entered is None:
                return
            rule, call = entered
            made = getattr(getattr(answer, "workspace", None), "name", "")
            if call is not None and not call.target and made:  # a create: the audit names what it made
                entered = rule, dataclasses.replace(call, target=made)
            if exc is not None and _is_abort(exc):  # the servicer aborted with a status of its own
                code = context.code() if hasattr(context, "code") else None
                outcome = (code.name if code is not None else "UNKNOWN", context.details() or "")
            else:
                outcome = _outcome(exc)
            gate.leave(*entered, *outcome)

        def wrap_unary(behavior):
            def inner(request, context):
                entered = None
                try:
                    request, entered = enter(request, context)
                    answer = behavior(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped, never leaked
                    leave(entered, exc, context)
                    if _is_abort(exc):
                        raise
                    _abort_for(exc, context, method)
                leave(entered, None, context, answer)
                return answer
            return inner

        def wrap_stream(behavior):
            def inner(request, context):
                entered = None
                try:
                    request, entered = enter(request, context)
                    yield from behavior(request, context)
                except GeneratorExit:  # the client went away mid-stream
                    leave(entered, errors.Cancelled("the client cancelled the call"), context)
                    raise
                except Exception as exc:  # noqa: BLE001
                    leave(entered, exc, context)
                    if _is_abort(exc):
                        raise
                    _abort_for(exc, context, method)
                leave(entered, None, context)
            return inner

        kinds = {
            "unary_unary": (wrap_unary, grpc.unary_unary_rpc_method_handler),
            "unary_stream": (wrap_stream, grpc.unary_stream_rpc_method_handler),
            "stream_unary": (wrap_unary, grpc.stream_unary_rpc_method_handler),
            "stream_stream": (wrap_stream, grpc.stream_stream_rpc_method_handler),
        }
        for attr, (wrap, make) in kinds.items():
            behavior = getattr(handler, attr)
            if behavior is not None:
                return make(wrap(behavior), request_deserializer=_tolerant(handler.request_deserializer),
                            response_serializer=handler.response_serializer)
        return handler


def _is_abort(exc: BaseException) -> bool:
    # context.abort raises a bare Exception subclass private to grpc; let it through.
    return type(exc).__name__ == "_AbortError" or (type(exc) is Exception and not exc.args)


class Service:
    """A running vws server: the grpc server, its port, health, and a stop that drains."""

    def __init__(self, server: grpc.Server, port: int, health_servicer, service_names: list[str],
                 on_stop: Callable[[], None] | None = None):
        self.server, self.port, self.health, self.service_names = server, port, health_servicer, service_names
        self._on_stop = on_stop
        self._stopped = threading.Event()

    def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self._on_stop:
            self._on_stop()

    def wait_for_termination(self) -> None:
        """Blocks until SIGTERM/SIGINT (main thread) or stop(), then stops gracefully."""
        stop_requested = threading.Event()

        def handler(signum, frame):
            log.info("signal %d: stopping gracefully", signum)
            stop_requested.set()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)
        while not stop_requested.wait(0.5):
            if self._stopped.is_set():
                return
        self.stop()


# grpcurl and grpc-js tools ask v1 first; grpcio-reflection has only v1alpha, whose messages v1 kept as they were.
REFLECTION_SERVICES = (reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection")


def enable_reflection(server: grpc.Server, names: list[str]) -> None:
    """Serves reflection under both names. v1alpha alone is listed: the v1 file is not in the
    descriptor pool, so a client that describes what is listed finds every service."""
    servicer = reflection.ReflectionServicer(names + [reflection.SERVICE_NAME])
    handlers = {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(name, handlers)
                                     for name in REFLECTION_SERVICES])


def create_server(address: str, register: Callable[[grpc.Server], Iterable[str]], *,
                  max_workers: int = 32, on_stop: Callable[[], None] | None = None,
                  options: Iterable[tuple[str, int]] = (), identity: tls.Identity | None = None,
                  client_roots: bytes = b"", gate: Gate | None = None) -> Service:
    """Builds, binds and starts a server. `register` adds the servicers and returns their full
    service names (for health and reflection). Bind to `127.0.0.1:0` and read .port in tests.
    `options`: further channel arguments (e.g. HTTP/2 tuning for bulk streams).
    `identity`: TLS with this certificate, client certificates verified against `client_roots`
    (None: plain text, on loopback only); `gate`: who may call what (None: anyone)."""
    if identity is None:
        tls.require_loopback(address)
    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=[ErrorInterceptor(gate)],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024), *options],
    )
    names = list(register(server))
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    try:
        port = server.add_insecure_port(address) if identity is None else server.add_secure_port(
            address, tls.server_credentials(identity, client_roots or identity.ca_pem))
    except RuntimeError as exc:
        raise errors.Unavailable(f"cannot listen on {address}: {exc}; choose another --listen address") from exc
    if port == 0:
        raise errors.Unavailable(f"cannot listen on {address} (in use?); choose another --listen address")
    server.start()
    for name in names + [""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Service(server, port, health_servicer, names, on_stop)
