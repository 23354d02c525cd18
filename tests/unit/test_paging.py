"""Page tokens: sealed by the key, bound to their listing, and every field range-checked even
when the MAC holds (a token is a client's input)."""
from __future__ import annotations

import datetime as dt
import os
import secrets
import stat
import types

import pytest
from vws.common import errors, names
from vws.repository import paging

EVENTS = paging.listing("events", parent="workspaces/wabc123def456")


@pytest.fixture
def tokens():
    return paging.PageTokens(secrets.token_bytes(32))


def refused(call):
    with pytest.raises(errors.InvalidArgument) as e:
        call()
    assert [f for f, _ in e.value.violations] == ["page_token"] and "without page_token" in str(e.value)


def test_round_trips(tokens):
    assert tokens.sequence_after(tokens.sequence_token(EVENTS, 2**63 - 1), EVENTS) == 2**63 - 1
    assert tokens.sequence_after("", EVENTS) == 0
    managers = paging.listing("managers")
    assert tokens.name_after(tokens.name_token(managers, "managers/m-1"), managers, names.parse_manager_name) \
        == "managers/m-1"
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    workspaces = paging.listing("workspaces", owner="alice")
    assert tokens.time_and_id_after(tokens.time_and_id_token(workspaces, when, 7), workspaces) == (when, 7)
    assert tokens.time_and_id_after("", workspaces) is None


@pytest.mark.parametrize("sequence", [2**63, -1, True, False, "1", 1.0, None])
def test_a_sealed_sequence_out_of_range_is_refused(tokens, sequence):
    refused(lambda: tokens.sequence_after(tokens.sequence_token(EVENTS, sequence), EVENTS))


GOOD = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize("time, row_id", [
    (dt.datetime(2020, 1, 1), 1),                                          # no zone
    (dt.datetime(1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))), 1),  # before year 1 in UTC
    (types.SimpleNamespace(isoformat=lambda: "x" * 100), 1),
    (types.SimpleNamespace(isoformat=lambda: 5), 1),
    (GOOD, 2**64), (GOOD, -1), (GOOD, True), (GOOD, "1")])
def test_a_sealed_time_and_id_out_of_range_is_refused(tokens, time, row_id):
    what = paging.listing("workspaces")
    refused(lambda: tokens.time_and_id_after(tokens.time_and_id_token(what, time, row_id), what))


@pytest.mark.parametrize("name", ["managers/" + "a" * 100, "images/x", 5, None])
def test_a_sealed_name_its_parser_refuses_is_refused(tokens, name):
    what = paging.listing("managers")
    refused(lambda: tokens.name_after(tokens.name_token(what, name), what, names.parse_manager_name))


def test_another_key_another_listing_and_damage_are_refused(tokens):
    token = tokens.sequence_token(EVENTS, 5)
    other = paging.PageTokens(secrets.token_bytes(32))
    for bad in (other.sequence_token(EVENTS, 5), token[:-1], token[:20], token + "A", token.replace(token[5], "-"
                if token[5] != "-" else "_", 1), "", "%%%", "é", "A" * (paging.MAX_TOKEN + 1)):
        if bad:
            refused(lambda bad=bad: tokens.sequence_after(bad, EVENTS))
    refused(lambda: tokens.sequence_after(token, paging.listing("events", parent="workspaces/wother1234567")))


def test_the_key_is_kept_in_the_data_directory(tmp_path):
    first = paging.PageTokens.kept_in(tmp_path)
    key = tmp_path / paging.KEY_FILE
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    again = paging.PageTokens.kept_in(tmp_path)
    assert again.sequence_after(first.sequence_token(EVENTS, 3), EVENTS) == 3
