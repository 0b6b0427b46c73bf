"""The pure parts of the reports: schedule arithmetic and captions."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.reports import (
    TokenPeak,
    best_caption,
    daily_caption,
    format_multiple,
    latest_due,
    next_due,
    report_day,
)
from messages.delivery import MAX_CAPTION
from sandbox.telegram.entities import parse_text, utf16_len


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_due_moments_are_utc_wall_times() -> None:
    assert latest_due(ts("2025-06-15T19:59:59"), "20:00") == ts("2025-06-14T20:00:00")
    assert latest_due(ts("2025-06-15T20:00:00"), "20:00") == ts("2025-06-15T20:00:00")
    assert latest_due(ts("2025-06-15T20:00:30"), "20:00") == ts("2025-06-15T20:00:00")
    assert next_due(ts("2025-06-15T20:00:00"), "20:00") == ts("2025-06-16T20:00:00")
    assert next_due(ts("2025-06-15T19:59:59"), "20:00") == ts("2025-06-15T20:00:00")
    assert next_due(ts("2025-06-15T23:59:00"), "00:00") == ts("2025-06-16T00:00:00")
    assert report_day(ts("2025-06-15T21:00:00")) == "2025-06-15"


def test_multiples_read_like_the_alerts() -> None:
    assert [format_multiple(m) for m in (1.0, 1.99, 2.0, 3.45, 5.0, 12.4, 2500.0)] == [
        "<2x",
        "<2x",
        "2x",
        "3.5x",
        "5x",
        "12x",
        "2,500x",
    ]
    assert format_multiple(float("nan")) == "<2x"


def test_captions_escape_symbols_and_name_unknown_tokens_by_address() -> None:
    tokens = [
        TokenPeak("sol:AbcdEFGHijklmnopQRSTuvwx", "", 5.0),
        TokenPeak("sol:x", "<b>rug</b>&co", 1.0),
    ]
    text = daily_caption("2025-06-15", tokens)
    parsed = parse_text(text, "HTML")
    assert parsed.plain.splitlines() == [
        "Your calls today · 2025-06-15 (UTC)",
        "2 tokens, 1 reached 2x or more",
        "• Abcd..uvwx — 5x",
        "• <b>rug</b>&co — <2x",
    ]
    best = parse_text(best_caption("2025-06-15", [TokenPeak("sol:x", "MOON", 50, 3)]), "HTML")
    assert best.plain.splitlines()[1] == "1. MOON — 50x · 3 users"


def test_a_long_day_is_cut_to_telegrams_caption_limit() -> None:
    tokens = [TokenPeak(f"sol:T{i}", f"TOKEN{i:03d}", 2.0 + i) for i in range(200)]
    text = daily_caption("2025-06-15", tokens)
    plain = parse_text(text, "HTML").plain
    assert utf16_len(plain) <= MAX_CAPTION
    last = plain.splitlines()[-1]
    shown = sum(1 for line in plain.splitlines() if line.startswith("• "))
    assert last == f"... and {200 - shown} more" and shown > 20


symbols = st.text(max_size=30)
peaks = st.floats(min_value=0, max_value=1e9) | st.just(float("nan"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(symbols, peaks, st.integers(1, 10**6)), max_size=40))
def test_captions_are_always_valid_html_within_the_limit(
    rows: list[tuple[str, float, int]],
) -> None:
    tokens = [TokenPeak(f"sol:addr{i}", s, p, u) for i, (s, p, u) in enumerate(rows)]
    for text in (daily_caption("2025-06-15", tokens), best_caption("2025-06-15", tokens)):
        parsed = parse_text(text, "HTML")  # raises on HTML Telegram would refuse
        assert utf16_len(parsed.plain) <= MAX_CAPTION
