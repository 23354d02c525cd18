"""Every RPC of the contract, fuzzed from its descriptors against a real stack (issue 17): no
answer INTERNAL or UNKNOWN, no traceback or host path in a message, no message of 1 KB or more,
every accepted create usable; the service-only RPCs refused to users; undecodable bytes answered
as the client's error; and after the run nothing left that the run did not mean to leave.

VWS_FUZZ_EXAMPLES (default 20) is the number of examples per RPC; `make fuzz` runs 2000. Each
test reports every distinct failure of its RPC, not only the first."""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz import harness, values
from tests.fuzz.run import PUBLIC, SERVICE_ONLY, label, methods

EXAMPLES = int(os.environ.get("VWS_FUZZ_EXAMPLES", "20"))
# No shrinking: a failure is recorded, not raised, so that the run goes on to the next ones.
# The suite's bounded run (make test) draws the same examples every time, so that it says the
# same of the same code; `make fuzz` sets VWS_FUZZ_RANDOM=1 and explores afresh.
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                    suppress_health_check=list(HealthCheck), print_blob=False,
                    derandomize=os.environ.get("VWS_FUZZ_RANDOM", "") != "1")
# Service-only RPCs of the public services: the gate refuses them to users.
SERVICE_ONLY_PUBLIC = {"DeployWorkspace", "AcceptMigration", "FinishMigration", "AbortMigration",
                       "RegisterManager", "HeartbeatManager"}
# Undecodable request bytes: a bad wire type, a length past the end, a varint too long, a string
# field holding invalid UTF-8, a group start with no end.
GARBAGE = [b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab", b"\x08" + b"\x80" * 10 + b"\x01", b"\x0b",
           b"\x0a\x02\xc3\x28", b"\x0f\x00"]


def requests(method, hints) -> st.SearchStrategy[list]:
    """One request; for a client stream (Exec) one or two (a later one carries stdin)."""
    one = values.message(method.input_type, hints)
    if method.client_streaming:
        return st.tuples(one, st.one_of(st.none(), one)).map(lambda p: [m for m in p if m is not None])
    return one.map(lambda m: [m])


def report(failures) -> str:
    return f"{len(failures)} distinct failures:\n" + harness.Ledger().table(failures)


def fuzz_method(fuzz, method, who="admin", expect_refusal=False, examples=EXAMPLES):
    @settings(SETTINGS, max_examples=examples)
    @given(requests(method, fuzz.hints))
    def one(batch):
        fuzz.judge(method, batch, fuzz.send(method, batch, who), who, expect_refusal)
    one()


@pytest.mark.parametrize("method", methods(PUBLIC), ids=harness.rpc_name)
def test_public_rpc(fuzz, method):
    fuzz_method(fuzz, method, expect_refusal=method.name in SERVICE_ONLY_PUBLIC)
    failures = fuzz.ledger.failures_of(label(method))
    assert not failures, report(failures)


SERVICE_METHODS = methods(SERVICE_ONLY) + [m for m in methods(PUBLIC) if m.name in SERVICE_ONLY_PUBLIC]


@pytest.mark.parametrize("who", ["admin", "user"])
@pytest.mark.parametrize("method", SERVICE_METHODS, ids=harness.rpc_name)
def test_service_only_rpc_refused_to_users(fuzz, method, who):
    fuzz_method(fuzz, method, who, expect_refusal=True, examples=max(3, EXAMPLES // 4))
    failures = fuzz.ledger.failures_of(label(method, who))
    assert not failures, report(failures)


@pytest.mark.parametrize("method", methods(PUBLIC) + methods(SERVICE_ONLY), ids=harness.rpc_name)
def test_undecodable_bytes(fuzz, method):
    @settings(SETTINGS, max_examples=max(len(GARBAGE), EXAMPLES // 2))
    @given(st.one_of(st.sampled_from(GARBAGE), st.binary(min_size=1, max_size=64)))
    def one(raw):
        fuzz.judge(method, [raw], fuzz.send(method, [raw], raw=True), raw=True)
    one()
    failures = fuzz.ledger.failures_of(label(method, raw=True))
    assert not failures, report(failures)


def test_no_strays_after_the_run(fuzz):
    strays = fuzz.strays()
    fuzz.ledger.notes.update({f"stray {s.split()[0]}": 1 for s in strays})
    assert not strays, "left behind:\n" + "\n".join(strays)
