"""Bad events the sandbox feed can inject, one of each kind a real feed has been seen to send.

Each entry says which `messages.wire.WireRejected` reason a correct consumer should count
(``unknown_kind`` for an event name it does not know), so ingest tests can check their
counters against what was sent. The payloads are built from one fixed valid event, so
injecting them never disturbs the seeded stream.
"""

from __future__ import annotations

import json
from typing import Any, Final

from messages.wire import SCHEMA_VERSION, ChannelCall, PriceUpdate, TokenEvent, encode

__all__ = ["MALFORMED_KINDS", "malformed_events"]

_FDV: Final = 1_000_000.0

_TEMPLATE_TOKEN: Final = TokenEvent(
    v=SCHEMA_VERSION,
    event_id="malformed-template",
    seq=1,
    emitted_at=1_700_000_000.0,
    chain_id="solana",
    token_address="MaLfoRMedTokenAddress1111111111111111111111",  # noqa: S106 - not a secret
    pair_address="MaLfoRMedPairAddress11111111111111111111111",
    symbol="BAD",
    name="Malformed",
    price_usd="0.001",
    fdv=_FDV,
    market_cap=_FDV,
    liquidity_usd=100_000.0,
    volume_h24=50_000.0,
    calls=(
        ChannelCall(
            channel_id=1_000_000_001,
            username="malformed_calls",
            message_id=1,
            called_at=1_700_000_000.0,
            fdv_at_call=_FDV,
        ),
    ),
)
_TEMPLATE_PRICE: Final = PriceUpdate(
    v=SCHEMA_VERSION,
    event_id="malformed-template",
    seq=1,
    emitted_at=1_700_000_000.0,
    chain_id="solana",
    token_address=_TEMPLATE_TOKEN.token_address,
    pair_address=_TEMPLATE_TOKEN.pair_address,
    price_usd="0.001",
    fdv=_FDV,
    market_cap=_FDV,
    liquidity_usd=100_000.0,
    volume_h24=50_000.0,
)


def _token(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode(_TEMPLATE_TOKEN))
    data.update(changes)
    return data


def _price(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode(_TEMPLATE_PRICE))
    data.update(changes)
    return data


def _text(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


MALFORMED_KINDS: Final[dict[str, tuple[str, Any, str]]] = {
    "bad_json": ("token_event", '{"v":1,"eventId":"x","seq":', "malformed_json"),
    "wrong_type": ("token_event", _text(_token(seq="12")), "wrong_type"),
    "negative_fdv": ("price_update", _text(_price(fdv=-5.0)), "invalid_value"),
    "nan": ("price_update", _text(_price(fdv=float("nan"))), "malformed_json"),
    "infinite": (
        "price_update",
        _text(_price()).replace('"fdv":1000000.0', '"fdv":1e999'),
        "invalid_value",
    ),
    "unknown_version": ("token_event", _text(_token(v=SCHEMA_VERSION + 1)), "unknown_version"),
    "oversize": ("token_event", _text(_token(padding="x" * 70_000)), "oversize"),
    "unknown_event": ("token_evnt", _text(_token()), "unknown_kind"),
    "missing_field": ("token_event", _text(_without(_token(), "calls")), "missing_field"),
    "empty_address": ("price_update", _text(_price(tokenAddress="")), "invalid_value"),
    "not_text": ("token_event", 42, "wrong_type"),
    "no_payload": ("price_update", None, "wrong_type"),
}
"""label -> (socket.io event name, payload, the rejection reason a consumer should count).

``not_text`` sends a number instead of JSON text; ``no_payload`` sends the event with no
argument at all, so a handler must accept ``*args``."""


def malformed_events(count: int) -> list[tuple[str, str, Any]]:
    """``count`` malformed events cycling through every kind: (label, event name, payload)."""
    labels = list(MALFORMED_KINDS)
    out: list[tuple[str, str, Any]] = []
    for i in range(count):
        label = labels[i % len(labels)]
        name, payload, _ = MALFORMED_KINDS[label]
        out.append((label, name, payload))
    return out
