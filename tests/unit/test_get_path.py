"""A user's Get costs the repository one statement: the access check's first read of a
workspace answers its wire message too, which Get then takes from the read cache."""
from __future__ import annotations

from vws.common.auth import pki


def test_the_administrators_name_is_built_once():
    # every call presenting a certificate of the site's CA is compared with it
    assert pki.admin_identity() is pki.admin_identity()
    assert pki.public_client_identity() is pki.public_client_identity()
