"""What a proxy holder signs to log in, computed as protos/vws/v1/auth.proto describes it
(LoginRequest.signature) without vws's code, is what the server checks."""
from __future__ import annotations

import hashlib
import os

from vws.common.auth.session import login_message


def test_the_contract_defines_the_signed_bytes():
    chain = [os.urandom(700), os.urandom(1200), b""]
    challenge = "vwsc1.eyJhdWQiOiJ4In0.mac"
    digest = hashlib.sha256(b"".join(len(c).to_bytes(4, "big") + c for c in chain)).hexdigest()
    expected = b"vws-login-v1\n" + challenge.encode("utf-8") + b"\n" + digest.encode("ascii")
    assert len(b"vws-login-v1\n") == 13 and len(digest) == 64 and digest == digest.lower()
    assert login_message(challenge, chain) == expected
