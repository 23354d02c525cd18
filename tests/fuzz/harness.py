"""Sending one fuzzed request and judging the answer: the calls made from the descriptors (unary
and streaming alike), the checks every answer must pass, and the ledger of a run (requests sent,
statuses by code, each distinct failure once with its count)."""
from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor, message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# Answers a request can never deserve, whatever it held.
FORBIDDEN_CODES = ("INTERNAL", "UNKNOWN")
TRACEBACK = ("Traceback", 'File "')
HOST_PATHS = ("/var/lib", "/root", "/tmp/pytest-of")
MAX_MESSAGE = 1024
RICH = (error_details_pb2.BadRequest, error_details_pb2.QuotaFailure, error_details_pb2.PreconditionFailure,
        error_details_pb2.ErrorInfo, error_details_pb2.ResourceInfo, error_details_pb2.DebugInfo,
        error_details_pb2.Help, error_details_pb2.LocalizedMessage, error_details_pb2.RetryInfo)


@dataclasses.dataclass
class Outcome:
    code: str                  # the status code's name, OK included
    details: str = ""
    rich: list[str] = dataclasses.field(default_factory=list)   # texts of google.rpc details
    response: object = None    # the last response message, for an OK
    fields: list[str] = dataclasses.field(default_factory=list)  # BadRequest's fields
    after: list[str] = dataclasses.field(default_factory=list)   # problems found by a follow-up (a create unusable)

    @property
    def messages(self) -> list[str]:
        return [self.details, *self.rich]


def method_path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def rpc_name(method: descriptor.MethodDescriptor) -> str:
    return f"{method.containing_service.name}/{method.name}"


def _rich(exc: grpc.RpcError) -> tuple[list[str], list[str]]:
    texts, fields = [], []
    try:
        status = rpc_status.from_call(exc)
    except Exception as e:  # noqa: BLE001 - a malformed grpc-status-details-bin is a finding of its own
        return [f"<unreadable status details: {e}>"], fields
    for detail in (status.details if status else []):
        for kind in RICH:
            if detail.Is(kind.DESCRIPTOR):
                msg = kind()
                detail.Unpack(msg)
                texts.append(str(msg))
                if isinstance(msg, error_details_pb2.BadRequest):
                    fields += [v.field for v in msg.field_violations]
                break
        else:
            texts.append(detail.value.decode(errors="replace"))
    return texts, fields


def invoke(channel: grpc.Channel, method: descriptor.MethodDescriptor, requests: list, timeout: float,
           raw: bool = False) -> Outcome:
    """Sends `requests` (one for a unary request, any number for a client stream; bytes when
    `raw`), reads the answer through (a server stream: to its end, or the first response of an
    endless one), and returns what came back."""
    out_cls = message_factory.GetMessageClass(method.output_type)
    serialize = (lambda b: b) if raw else (lambda m: m.SerializeToString())
    kind = (method.client_streaming, method.server_streaming)
    make = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
            (True, False): channel.stream_unary, (True, True): channel.stream_stream}[kind]
    stub = make(method_path(method), request_serializer=serialize, response_deserializer=out_cls.FromString)
    arg = iter(requests) if method.client_streaming else requests[0]
    last = None
    try:
        if method.server_streaming:
            call = stub(arg, timeout=timeout)
            try:
                for last in call:
                    if method.name == "WatchWorkspace":  # streams until TERMINATED: the first answer is enough
                        break
            finally:
                call.cancel()
        else:
            last = stub(arg, timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED and last is not None:
            return Outcome("OK", response=last)
        rich, fields = _rich(exc)
        return Outcome(exc.code().name, exc.details() or "", rich, fields=fields)
    return Outcome("OK", response=last)


def problems(outcome: Outcome, sent: Iterable[str], data_dirs: Iterable[str] = ()) -> list[str]:
    """What is wrong with an answer: a forbidden status, a traceback or a host path in a message
    (one the request did not carry itself), a message of 1 KB or more."""
    sent = list(sent)
    found = []
    if outcome.code in FORBIDDEN_CODES:
        found.append(outcome.code)
    if outcome.code == "RESOURCE_EXHAUSTED" and "metadata" in outcome.details:
        found.append("metadata overflow")  # gRPC's refusal of a status too large for its headers
    for text in outcome.messages:
        for needle in TRACEBACK:
            if needle in text and not any(needle in s for s in sent):
                found.append("traceback")
                break
        for needle in (*HOST_PATHS, *data_dirs):
            if needle and needle in text and not any(needle in s for s in sent):
                found.append(f"host path {needle}")
                break
        if len(text.encode()) >= MAX_MESSAGE:
            found.append("message over 1 KB")
    return found


def prefix(text: str, width: int = 60) -> str:
    """A message's start with what varies between requests (numbers, ids, quoted input) folded,
    so that one cause is one entry."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", text)
    text = re.sub(r"-?\d+", "N", text)
    return text[:width]


@dataclasses.dataclass
class Failure:
    rpc: str
    check: str
    status: str
    prefix: str
    cause: str = ""      # for an INTERNAL of ours: the exception and where, from the server's log
    fields: str = ""
    count: int = 0
    example: str = ""


def cause_in_log(text: str, ref: str) -> str:
    """`ExcType: message @ module.py:function` of the traceback logged under `(ref <ref>)`:
    the exception and the deepest frame in vws's own code."""
    at = text.find(f"(ref {ref})")
    if at < 0:
        return ""
    lines = text[at:].splitlines()[1:80]
    where, last = "", ""
    for line in lines:
        frame = re.match(r'\s*File "([^"]+)", line \d+, in (\S+)', line)
        if frame:
            if "/services/" in frame.group(1) or "/native/" in frame.group(1):
                where = f"{frame.group(1).rsplit('/services/', 1)[-1]}:{frame.group(2)}"
            continue
        if re.match(r"^[A-Za-z_.]+(Error|Exception|Exit)\b.*", line) or re.match(r"^[a-z_.]+\.[A-Z]\w+:", line):
            last = line.strip()
        if line and not line.startswith((" ", "Traceback", "During", "The above")) and last and line.strip() != last:
            break
    return f"{last[:90]} @ {where}" if last else ""


class Ledger:
    """Everything a run sent and heard; each distinct failure (RPC, check, status, message
    prefix) kept once, with how often it came."""

    def __init__(self):
        self.sent = 0
        self.statuses: collections.Counter = collections.Counter()
        self.by_rpc: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.failures: dict[tuple, Failure] = {}
        self.notes: collections.Counter = collections.Counter()

    def record(self, rpc: str, outcome: Outcome) -> None:
        self.sent += 1
        self.statuses[outcome.code] += 1
        self.by_rpc[rpc][outcome.code] += 1

    def failure(self, rpc: str, check: str, outcome: Outcome, example: str, cause: str = "") -> tuple[Failure, bool]:
        """The failure's entry (counted once more) and whether it is new."""
        key = (rpc, check, outcome.code, prefix(outcome.details), prefix(cause, 120))
        new = key not in self.failures
        if new:
            self.failures[key] = Failure(rpc, check, outcome.code, prefix(outcome.details), cause,
                                         example=example[:400])
        f = self.failures[key]
        f.count += 1
        return f, new

    def failures_of(self, rpc: str) -> list[Failure]:
        return [f for f in self.failures.values() if f.rpc == rpc]

    def table(self, failures: list[Failure] | None = None) -> str:
        rows = failures if failures is not None else list(self.failures.values())
        lines = [f"{'rpc':34} {'check':20} {'status':19} {'count':>5}  fields  |  message prefix"]
        for f in sorted(rows, key=lambda f: (f.rpc, f.check, f.status)):
            lines.append(f"{f.rpc:34} {f.check[:20]:20} {f.status:19} {f.count:5}  {f.fields or '-'}  |  "
                         f"{f.cause or f.prefix}")
            if f.example:
                lines.append(f"{'':34} e.g. {f.example[:200]}")
        return "\n".join(lines)

    def by_cause(self) -> str:
        """The failures grouped by what causes them: the same exception at the same place, or
        the same message, whatever the RPC."""
        groups: dict[tuple, list[Failure]] = collections.defaultdict(list)
        for f in self.failures.values():
            what = prefix(f.cause, 120) if f.cause else re.sub(r"/vws\.vN\.\w+/\w+", "<rpc>", f.prefix)
            what = re.sub(r"(soft|hard) limit", "limit", what)
            groups[(f.check, f.status, what)].append(f)
        lines = []
        for (check, status, what), fs in sorted(groups.items(), key=lambda g: -sum(f.count for f in g[1])):
            rpcs = sorted({f.rpc for f in fs})
            fields = sorted({x for f in fs for x in f.fields.split(",") if x})
            lines.append(f"{sum(f.count for f in fs):5} x {status} [{check}] {what}")
            lines.append(f"        fields: {', '.join(fields) or '-'}; RPCs ({len(rpcs)}): {', '.join(rpcs)[:300]}")
        return "\n".join(lines)

    def summary(self) -> str:
        codes = ", ".join(f"{c} {n}" for c, n in self.statuses.most_common())
        out = [f"fuzz: {self.sent} requests sent; statuses: {codes or 'none'}",
               (f"fuzz: {len(self.failures)} distinct failures"
                f" ({sum(f.count for f in self.failures.values())} failing requests)")]
        for rpc, counts in sorted(self.by_rpc.items()):
            out.append(f"  {rpc}: " + ", ".join(f"{c} {n}" for c, n in counts.most_common()))
        if self.notes:
            out.append("fuzz: notes: " + ", ".join(f"{k} {n}" for k, n in self.notes.most_common()))
        if self.failures:
            out.append("fuzz: failures by cause")
            out.append(self.by_cause())
            out.append("fuzz: every distinct failure")
            out.append(self.table())
        return "\n".join(out)


def short(msg, limit: int = 400) -> str:
    """A request for a report: its text with long values cut."""
    text = re.sub(r"(.)\1{40,}", lambda m: f"{m.group(1)}×{len(m.group(0))}", str(msg))
    text = re.sub(r"(\\[0-7]{3}|\\x[0-9a-f]{2}){40,}", "<bytes>", text)
    return " ".join(text.split())[:limit]

