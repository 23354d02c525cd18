"""Paged listings: page sizes and page tokens. A token is opaque to clients: the point where its
listing resumes, sealed by an HMAC-SHA256 under the repository's key over that point and the
listing's filters, so that a token is refused by any other listing, by another repository and
when altered or cut short. Each field is range-checked once the MAC holds, all the same: a token
comes back from a client."""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import os
import pathlib
import secrets
from collections.abc import Callable

from ..common import errors
from ..common.auth.session import load_or_create_key

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
KEY_FILE = "page-tokens.key"   # in the data directory, made at first start (mode 0600)
MAX_TOKEN = 1024               # characters; the tokens given out are under 200
MAX_TIME = 64                  # characters of an ISO 8601 time
INT64_MAX = 2**63 - 1          # SQLite's and PostgreSQL's bigint
_TAG = hashlib.sha256().digest_size


def checked_page_size(value: int, field: str = "page_size") -> int:
    if value < 0:
        raise errors.InvalidArgument(f"is negative ({value}); give 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}",
                                     field)
    return DEFAULT_PAGE_SIZE if value == 0 else min(value, MAX_PAGE_SIZE)


def listing(what: str, **filters) -> bytes:
    """What a token is good for: a listing with its filters, bound into the token's MAC (not carried in it)."""
    return json.dumps({"listing": what, **filters}, sort_keys=True, separators=(",", ":")).encode()


def _refused() -> errors.InvalidArgument:
    return errors.InvalidArgument(
        "is not a page token this repository gave for this listing (altered, cut short, from another repository, "
        "or for other filters); list again without page_token to start from the first page, or pass the "
        "next_page_token of the previous response with the same filters", "page_token")


def _count(value) -> int:
    """A sequence number or row id: an int (not a bool) from 0 to the largest 64-bit integer."""
    if type(value) is not int or not 0 <= value <= INT64_MAX:
        raise _refused()
    return value


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class PageTokens:
    """Gives out and takes back the page tokens of one repository."""

    def __init__(self, key: bytes):
        if len(key) < 32:
            raise ValueError("a page token key has at least 32 bytes")
        self._key = key

    @classmethod
    def kept_in(cls, data_dir: str | os.PathLike) -> PageTokens:
        """With the key kept in the data directory, so that tokens outlive a restart."""
        return cls(load_or_create_key(pathlib.Path(data_dir) / KEY_FILE))

    @classmethod
    def of_this_process(cls) -> PageTokens:
        """With a key of this process only: its tokens are refused after a restart."""
        return cls(secrets.token_bytes(32))

    def _tag(self, what: bytes, payload: bytes) -> bytes:
        # The listing is JSON, which never holds a raw NUL: the two parts cannot be confused.
        return hmac.new(self._key, what + b"\0" + payload, hashlib.sha256).digest()

    def _issue(self, what: bytes, resume: dict) -> str:
        payload = json.dumps(resume, separators=(",", ":")).encode()
        return _b64(self._tag(what, payload) + payload)

    def _open(self, token: str, what: bytes) -> dict:
        """The resume point a token carries, once its MAC holds for this listing."""
        if len(token) > MAX_TOKEN:
            raise _refused()
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise _refused() from None
        tag, payload = raw[:_TAG], raw[_TAG:]
        if _b64(raw) != token or not payload or not hmac.compare_digest(tag, self._tag(what, payload)):
            raise _refused()
        try:
            doc = json.loads(payload)
        except ValueError:
            raise _refused() from None
        if not isinstance(doc, dict):
            raise _refused()
        return doc

    def sequence_token(self, what: bytes, sequence: int) -> str:
        return self._issue(what, {"s": sequence})

    def sequence_after(self, token: str, what: bytes) -> int:
        """The sequence number a listing in order of sequence resumes after: 0 for the first page."""
        return _count(self._open(token, what).get("s")) if token else 0

    def name_token(self, what: bytes, name: str) -> str:
        return self._issue(what, {"n": name})

    def name_after(self, token: str, what: bytes, parse: Callable[[str], object]) -> str:
        """The name a by-name listing resumes after ("" for the first page); `parse` is the
        name's own check (its form and maximum length)."""
        if not token:
            return ""
        name = self._open(token, what).get("n")
        if type(name) is not str:
            raise _refused()
        try:
            parse(name)
        except errors.InvalidArgument:
            raise _refused() from None
        return name

    def time_and_id_token(self, what: bytes, time: dt.datetime, row_id: int) -> str:
        return self._issue(what, {"c": time.isoformat(), "i": row_id})

    def time_and_id_after(self, token: str, what: bytes) -> tuple[dt.datetime, int] | None:
        """The (time, row id) a newest-first listing resumes after: None for the first page."""
        if not token:
            return None
        doc = self._open(token, what)
        text = doc.get("c")
        if type(text) is not str or len(text) > MAX_TIME:
            raise _refused()
        try:
            time = dt.datetime.fromisoformat(text)
            if time.tzinfo is None:
                raise ValueError
            time = time.astimezone(dt.UTC)  # an offset can carry it past year 1 or 9999
        except (ValueError, OverflowError):
            raise _refused() from None
        return time, _count(doc.get("i"))
