"""Authorisation cost per call once a credential has been checked (the principal cached by the
credential's digest, then the policy's decision), beside the full first check of a real proxy
(chain, VOMS attribute certificate, login signature) as its anchor, in the same run.

Goal: the cached path <= 1 ms p50. Proxies come from voms-proxy-fake (tests/gridcreds.py)."""
from __future__ import annotations

import datetime as dt
import time

import pytest

from bench.conftest import ms
from tests.gridcreds import MISSING_TOOLS, PRODUCTION, PRODUCTION_RULE, WHY, GridWorld
from vws.common.auth import Authenticator, ProxyFile, SessionAuthority, TrustStore, VomsDir
from vws.common.errors import Unauthenticated
from vws.repository.policy import PolicyFile, WorkspaceRequest

pytestmark = pytest.mark.requires(MISSING_TOOLS, WHY)
GROUP = "auth"
POLICY = PRODUCTION_RULE + """
[quota.atlas-production]
workspaces = 100
"""
REQUEST = WorkspaceRequest("sandbox", memory_bytes=1 << 30, cpu_millis=500, lifetime=dt.timedelta(hours=2))
_SAMPLES: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-bench")
    w = GridWorld(root)
    alice = w.user("Alice User")
    voms = w.voms_server("voms.example.org", "atlas")
    proxy = ProxyFile.load(w.proxy(alice, voms, fqans=(PRODUCTION, "/atlas")))
    (root / "policy.toml").write_text(POLICY)
    trust = TrustStore(w.ca_dir)
    foreign = w.user("Bob Elsewhere", ca=w.rogue_ca).cert_path.read_bytes()  # a CA this site does not trust

    def authenticator():
        return Authenticator(trust, VomsDir(w.vomsdir, trust), sessions=SessionAuthority(b"k" * 32, "bench"))
    return authenticator, proxy, PolicyFile(root / "policy.toml"), foreign


def _timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return sorted(out)


def test_first_check_of_a_proxy(benchmark, setting):
    """Anchor: a fresh authenticator each time, so nothing is cached: the whole login."""
    make, proxy, policy, _ = setting

    def first_login():
        auth = make()
        challenge, _ = auth.challenge()
        session = auth.login(challenge, proxy.chain_der, proxy.sign(challenge))
        assert policy.decide(session.principal, REQUEST).allowed
    benchmark.pedantic(first_login, rounds=20, iterations=1)
    _SAMPLES["first"] = _timed(first_login, 20)


def test_cached_authorisation_per_call(benchmark, setting, report):
    make, proxy, policy, _ = setting
    auth = make()
    challenge, _ = auth.challenge()
    token = auth.login(challenge, proxy.chain_der, proxy.sign(challenge)).token
    metadata = [("authorization", f"Bearer {token}")]

    def per_call():
        p = auth.from_call(metadata, None)
        return policy.decide(p, REQUEST)
    assert per_call().allowed
    benchmark.pedantic(per_call, rounds=2000, iterations=1)
    cached = _timed(per_call, 5000)
    p50 = cached[len(cached) // 2]
    first = _SAMPLES.get("first") or _timed(lambda: None, 1)
    anchor = first[len(first) // 2]
    report.row("auth per call, cached principal + policy (p50)", f"{p50 * 1e6:.1f} us",
               f"first proxy check {ms(anchor)}", f"{anchor / p50:.0f}x cheaper", "<= 1 ms p50")
    assert p50 <= 1e-3, f"cached authorisation p50 {p50 * 1e6:.0f} us is over the 1 ms goal"


def test_a_refused_certificate_per_call(benchmark, setting, report):
    """Every service asks its own authenticator (the site's CA only) whether a caller's TLS
    certificate is a vws service's. A user's certificate from another CA is refused there on
    every call; the refusal is remembered. Anchor: the refusal examined afresh (parsed, walked)."""
    make, _, _, foreign = setting
    auth = make()

    def refused(a=auth):
        try:
            a.certificate(foreign)
        except Unauthenticated:
            return
        raise AssertionError("a certificate from an untrusted CA was accepted")
    benchmark.pedantic(refused, rounds=2000, iterations=1)
    remembered = _timed(refused, 5000)
    afresh = _timed(lambda: refused(make()), 500)
    p50, anchor = remembered[len(remembered) // 2], afresh[len(afresh) // 2]
    report.row("a refused certificate per call (p50)", f"{p50 * 1e6:.1f} us",
               f"refused afresh {anchor * 1e6:.1f} us", f"{anchor / p50:.0f}x cheaper", "<= 1 ms p50")
    assert p50 <= 1e-3, f"a remembered refusal p50 {p50 * 1e6:.0f} us is over the 1 ms goal"
