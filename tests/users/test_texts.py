"""Notification texts: escaped, linked, under Telegram's 4096 characters."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.texts import TELEGRAM_LIMIT, dexscreener_url, format_usd, notification_text
from messages.wire import ChannelCall, TokenEvent
from tests.users.support import channel

NOW = 1_750_000_000.0
TAG = re.compile(r"</?([a-z]+)[^>]*>")


def event(
    calls: list[tuple[int, str]],
    *,
    symbol: str = "PEPE",
    name: str = "Pepe",
    address: str = "So1ana111",
    pair: str = "Pair111",
    chain: str = "solana",
    fdv: float = 1_234_567.0,
) -> TokenEvent:
    return TokenEvent(
        v=1,
        event_id="e1",
        seq=1,
        emitted_at=NOW,
        chain_id=chain,
        token_address=address,
        pair_address=pair,
        price_usd="0.001",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=1.0,
        volume_h24=1.0,
        symbol=symbol,
        name=name,
        calls=tuple(
            ChannelCall(
                channel_id=cid, username=user, message_id=1, called_at=NOW - i, fdv_at_call=fdv
            )
            for i, (cid, user) in enumerate(calls)
        ),
    )


def test_a_notification_names_token_chain_fdv_channels_and_links() -> None:
    stats = {1: channel(1, 62.0, 3.41), 2: channel(2, 80.0, 5.0)}
    text = notification_text(event([(1, "alpha"), (2, "@beta"), (3, "gamma")]), stats)
    lines = text.splitlines()
    assert lines[0] == "🔔 <b>PEPE</b> (Pepe) on Solana"
    assert lines[1] == "FDV: <b>$1.23M</b>"
    assert lines[2] == "Called by 3 channels:"
    assert lines[3] == "• @beta: win rate 80 %, avg 5.0x (20 calls)"  # best first
    assert lines[4] == "• @alpha: win rate 62 %, avg 3.4x (20 calls)"
    assert lines[5] == "• @gamma: unrated"
    assert "<code>So1ana111</code>" in text
    assert '<a href="https://dexscreener.com/solana/Pair111">DexScreener</a>' in text


def test_everything_from_the_feed_is_escaped() -> None:
    text = notification_text(
        event(
            [(1, "<script>x</script>")],
            symbol="<b>&",
            name='"quoted" & <i>',
            address="Ab&c",
            pair='p"q',
        ),
        {},
    )
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>&lt;b&gt;&amp;</b>" in text
    assert "(&quot;quoted&quot; &amp; &lt;i&gt;)" in text
    assert 'href="https://dexscreener.com/solana/p%22q"' in text
    assert {m.group(1) for m in TAG.finditer(text)} <= {"b", "code", "a"}


def test_a_crowded_token_stays_under_the_limit() -> None:
    calls = [(i, "&" * 64) for i in range(512)]
    stats = {i: channel(i, 50.0, 2.0) for i in range(512)}
    text = notification_text(
        event(calls, symbol="<" * 64, name="&" * 200, address="A" * 128, pair="B" * 128), stats
    )
    assert len(text) <= TELEGRAM_LIMIT
    shown = sum(1 for line in text.splitlines() if line.startswith("• "))
    assert f"… and {512 - shown} more" in text
    assert text.endswith("DexScreener</a>")

    plain = notification_text(event([(i, f"c{i}") for i in range(512)]), stats)
    assert "… and 500 more" in plain  # at most 12 channel lines


@settings(max_examples=100, deadline=None)
@given(
    usernames=st.lists(st.text(min_size=1, max_size=64), min_size=1, max_size=40),
    symbol=st.text(min_size=1, max_size=64),
    name=st.text(max_size=200),
)
def test_any_feed_text_gives_a_valid_short_message(
    usernames: list[str], symbol: str, name: str
) -> None:
    calls = list(enumerate(usernames))
    stats = {i: channel(i, float(i % 100), 1.0 + i % 7, rated=i % 3 != 0) for i, _ in calls}
    text = notification_text(event(calls, symbol=symbol, name=name), stats)
    assert len(text) <= TELEGRAM_LIMIT
    assert {m.group(1) for m in TAG.finditer(text)} <= {"b", "code", "a"}


def test_amounts_and_links() -> None:
    assert [format_usd(v) for v in (950, 12_345, 1_250_000, 3.4e9, float("nan"))] == [
        "$950",
        "$12.3K",
        "$1.25M",
        "$3.40B",
        "n/a",
    ]
    assert dexscreener_url("base", "0xAb/c") == "https://dexscreener.com/base/0xAb%2Fc"
