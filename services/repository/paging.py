"""Paged listings: page sizes and page tokens. A token carries where its listing resumes and a
fingerprint of the listing's filters, so that a token is refused by any other listing."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json

from ..common import errors

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def checked_page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise errors.InvalidArgument(f"is negative ({value}); give 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}",
                                     field)
    return DEFAULT_PAGE_SIZE if value == 0 else min(value, MAX_PAGE_SIZE)


def encode_token(doc: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> dict:
    bad = errors.InvalidArgument("is not a page token of this listing; pass next_page_token from the previous "
                                 "response, with the same filters, or leave it empty for the first page",
                                 "page_token")
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(doc, dict) or doc.get("f") != fingerprint:
        raise bad
    return doc


def _resume_point(token: str, fingerprint: str, key: str, kind: type):
    doc = decode_token(token, fingerprint)
    if not isinstance(doc.get(key), kind):
        raise errors.InvalidArgument("is not a page token of this listing", "page_token")
    return doc[key]


def name_after(token: str, fingerprint: str) -> str:
    """The name a by-name listing resumes after: "" for the first page."""
    return _resume_point(token, fingerprint, "n", str) if token else ""


def sequence_after(token: str, fingerprint: str) -> int:
    """The sequence number a listing in order of sequence resumes after: 0 for the first page."""
    return _resume_point(token, fingerprint, "s", int) if token else 0


def fingerprint(**filters) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]
