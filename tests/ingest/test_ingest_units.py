"""Pure pieces of the ingest actor: decoding a socket.io message whatever it carries, the
URL shown in logs, the mailbox key."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.ingest import (
    DEFAULT_MAILBOX,
    Fed,
    decode_message,
    display_url,
    feed_key,
    ingest_mailbox,
)
from messages.ingest import IngestStatus
from messages.wire import KINDS, REJECT_REASONS, PriceUpdate, TokenEvent, WireRejected, encode
from runtime import Overflow
from sandbox.feed import MALFORMED_KINDS, FeedGenerator

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""The decoders themselves have their own 200-example properties (tests/messages); these
only cover how a socket.io message's name and argument list reach them."""

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)
names = st.one_of(st.sampled_from(KINDS), st.text(max_size=20), st.integers(), st.none())
arguments = st.lists(st.one_of(json_values, st.binary(max_size=40)), max_size=3).map(tuple)


def price(seq: int = 1) -> PriceUpdate:
    return PriceUpdate(
        v=1,
        event_id=f"p{seq}",
        seq=seq,
        emitted_at=1_700_000_000.0,
        chain_id="solana",
        token_address="So1Token",
        pair_address="So1Pair",
        price_usd="1.0",
        fdv=5.0,
        market_cap=5.0,
        liquidity_usd=1.0,
        volume_h24=1.0,
    )


@PROPERTY
@given(kind=names, args=arguments)
def test_any_message_is_an_event_or_a_counted_reason(kind: Any, args: tuple[Any, ...]) -> None:
    result = decode_message(kind, args)
    if isinstance(result, WireRejected):
        assert result.reason in REJECT_REASONS
    else:
        assert isinstance(result, TokenEvent | PriceUpdate)
        assert kind == result.KIND and len(args) == 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32), extra=st.integers(0, 2))
def test_valid_feed_events_decode_and_extra_arguments_are_refused(seed: int, extra: int) -> None:
    generator = FeedGenerator(seed=seed)
    for seq in range(1, 6):
        event = generator.next_event(seq, 1_700_000_000.0)
        text = encode(event).decode()
        assert decode_message(event.KIND, (text,)) == event
        if extra:
            refused = decode_message(event.KIND, (text,) + (text,) * extra)
            assert isinstance(refused, WireRejected)
            assert refused.reason == "wrong_type"


def test_every_malformed_injection_gets_its_expected_reason() -> None:
    for label, (name, payload, reason) in MALFORMED_KINDS.items():
        args = () if payload is None else (payload,)
        result = decode_message(name, args)
        assert isinstance(result, WireRejected), label
        assert result.reason == reason, label


def test_display_url_drops_credentials_path_and_query() -> None:
    assert display_url("https://user:secret@feed.example:8443/socket?token=abc") == (
        "https://feed.example:8443"
    )
    assert display_url("http://127.0.0.1:8765") == "http://127.0.0.1:8765"
    assert display_url("http://[::1]:80/x") == "http://[::1]:80"
    assert display_url("not a url") == "<invalid url>"
    assert display_url("http://host:99999") == "<invalid url>"


def test_mailbox_coalesces_price_updates_by_token_only() -> None:
    spec = ingest_mailbox(123)
    assert spec.capacity == 123
    assert spec.overflow is Overflow.COALESCE
    assert ingest_mailbox().capacity == DEFAULT_MAILBOX
    update = price()
    assert feed_key(Fed(update, 1, update.token_key)) == "solana:So1Token"
    assert feed_key(Fed(update, 1, None)) is None
    assert feed_key(update) is None
    assert feed_key(IngestStatus()) is None
