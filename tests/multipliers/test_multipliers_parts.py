"""The multiplier actor's small parts: stored values, the per-user side index, blob users."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.multiplier_index import MultiplierIndex
from actors.multipliers import _users_of, _UserTokens, pack_value, price_key, unpack_value
from messages.tracking import Track
from tests.multipliers.support import price

PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(blob=st.binary(max_size=300), symbol=st.text(max_size=80))
def test_stored_values_round_trip_blob_and_symbol(blob: bytes, symbol: str) -> None:
    got_blob, got_symbol = unpack_value(pack_value(blob, symbol))
    assert bytes(got_blob) == blob
    assert symbol.startswith(got_symbol)
    assert got_symbol == symbol or len(symbol.encode()) > 255


def test_a_bare_index_blob_reads_as_having_no_symbol() -> None:
    index = MultiplierIndex()
    index.track("solana:X", 1, 10.0, 0.0)
    blob = index.encode_token("solana:X")
    got, symbol = unpack_value(blob)
    assert bytes(got) == blob and symbol == ""


def test_users_of_reads_every_blob_and_counts_unreadable_ones_as_empty() -> None:
    index = MultiplierIndex()
    for user in (5, -7, 2**62):
        index.track("solana:A", user, 10.0, 0.0)
    index.track("solana:B", 9, 10.0, 0.0)
    a, b = index.encode_token("solana:A"), index.encode_token("solana:B")
    users, counts = _users_of([a, b"junk", b, a[:-1], b""])
    assert users.tolist() == [5, -7, 2**62, 9]
    assert counts == [3, 0, 1, 0, 0]


def test_side_index_finds_keys_adds_and_compacts() -> None:
    side = _UserTokens()
    side.load(
        np.array([1, 2, 1, 3], np.int64),
        np.array([0, 0, 1, 1]),
        ["solana:A", "solana:B"],
    )
    assert side.keys_of(1) == ["solana:A", "solana:B"]
    assert side.keys_of(4) == []
    side.add(4, "solana:C")
    side.add(1, "solana:A")  # again (re-tracked): listed once
    side.add(1, "solana:C")
    assert side.keys_of(1) == ["solana:A", "solana:B", "solana:C"]
    assert side.pending == 3 and side.pairs == 7
    dropped = side.compact(lambda key: key != "solana:B")
    assert dropped == 2
    assert side.pending == 0 and side.pairs == 5
    assert side.keys_of(1) == ["solana:A", "solana:C"]
    assert side.keys_of(3) == [] and side.keys_of(4) == ["solana:C"]
    side.add(3, "solana:B")
    assert side.keys_of(3) == ["solana:B"]


def test_only_price_updates_coalesce_by_token() -> None:
    assert price_key(price("solana:Abc", 1.0)) == "solana:Abc"
    assert price_key(Track(token_key="solana:Abc", user_id=1, fdv_at_notify=1.0)) is None
    assert price_key("solana:Abc") is None
