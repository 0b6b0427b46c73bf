"""The bot's pure parts: callback grammar, keyboards, texts, rate limiter, raw screening."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import bot_texts as texts
from actors.bot_intake import IntakeBot, RateLimiter, Verdict, raw_chat
from actors.bot_keyboards import (
    MAX_CALLBACK_BYTES,
    Cancel,
    ChoosePlan,
    Menu,
    PickPreset,
    SetField,
    cancel_keyboard,
    encode_callback,
    parse_callback,
    plans_keyboard,
    presets_keyboard,
    settings_keyboard,
)
from messages.filters import DEFAULT_PRESETS, FIELD_NAMES, FilterSettings
from messages.users import setting_rows

# -- callback data ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80), st.integers(), st.none()))
def test_parse_callback_never_raises_and_accepts_only_its_grammar(data: object) -> None:
    parsed = parse_callback(data)
    if parsed is not None:
        assert isinstance(data, str)
        assert encode_callback(parsed) == data
        assert len(data.encode()) <= MAX_CALLBACK_BYTES


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["set:", "preset:", "plan:", "menu:", "cancel", ""]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=70),
)
def test_mutated_callbacks_are_refused_or_round_trip(prefix: str, tail: str) -> None:
    data = prefix + tail
    parsed = parse_callback(data)
    if parsed is not None:
        assert encode_callback(parsed) == data


def test_every_button_parses_back() -> None:
    rows = setting_rows(FilterSettings())
    markups = [
        settings_keyboard(rows),
        cancel_keyboard(),
        presets_keyboard([p.name for p in DEFAULT_PRESETS] + ["Bad Name!"]),
        plans_keyboard(["daily", "weekly", "monthly", "lifetime", "weird"], ["sol", "nowpayments"]),
    ]
    seen = []
    for markup in markups:
        for row in markup["inline_keyboard"]:  # type: ignore[attr-defined]
            for button in row:
                parsed = parse_callback(button["callback_data"])
                assert parsed is not None, button
                seen.append(parsed)
    assert {SetField(f) for f in FIELD_NAMES} <= set(seen)
    assert Cancel() in seen and Menu("presets") in seen
    assert PickPreset("degen") in seen
    assert ChoosePlan("lifetime", "nowpayments") in seen
    assert not any(isinstance(p, PickPreset) and p.name == "bad name!" for p in seen)


@pytest.mark.parametrize(
    "data",
    [
        "set:unknown",
        "set:",
        "plan:monthly:paypal",
        "plan:yearly:sol",
        "preset:Has Space",
        "preset:" + "a" * 40,
        "menu:admin",
        "cancel:1",
        "set:min_win_rate\x00",
        "préset:x",
    ],
)
def test_forged_callbacks_are_refused(data: str) -> None:
    assert parse_callback(data) is None


# -- texts -----------------------------------------------------------------------------------


def test_texts_escape_and_fit() -> None:
    hostile = "<b>x</b> & " + "y" * 5000
    assert "<b>x" not in texts.unknown_command(hostile)
    assert len(texts.unknown_command(hostile)) < 200
    admin = texts.admin_text(hostile)
    assert admin.startswith("<pre>") and "&lt;b&gt;" in admin and len(admin) < 4096
    rows = setting_rows(FilterSettings(chains=frozenset({"solana", "base"})))
    shown = texts.settings_text(rows, note="<script>")
    assert "&lt;script&gt;" in shown and "Chains: <b>base, solana</b>" in shown
    assert len(texts.clip("line\n" * 2000)) <= 4096
    assert all(f"/{name}" in texts.help_text() for name, _ in texts.COMMANDS)


# -- rate limiting ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_refill_and_one_warning_per_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(burst=5, per_s=1.0, warn_window_s=60.0, clock=clock)
    assert [limiter.check(1) for _ in range(5)] == [Verdict.OK] * 5
    assert limiter.check(1) == Verdict.WARN
    assert [limiter.check(1) for _ in range(100)] == [Verdict.DROP] * 100
    assert limiter.check(2) == Verdict.OK  # others are unaffected
    clock.now += 1.0
    assert limiter.check(1) == Verdict.OK  # refilled one
    assert limiter.check(1) == Verdict.DROP  # still within the warning window: silent
    clock.now += 61.0
    assert [limiter.check(1) for _ in range(5)] == [Verdict.OK] * 5
    assert limiter.check(1) == Verdict.WARN  # a new window, a new single warning


def test_rate_limiter_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0, per_s=1, warn_window_s=1, clock=FakeClock())


# -- raw updates -----------------------------------------------------------------------------


def test_raw_chat_reads_messages_and_presses_only() -> None:
    assert raw_chat({"message": {"chat": {"id": 5}}}) == 5
    assert raw_chat({"callback_query": {"from": {"id": 6}, "message": {"chat": {"id": 7}}}}) == 7
    assert raw_chat({"callback_query": {"from": {"id": 6}}}) == 6
    assert raw_chat({"my_chat_member": {"chat": {"id": 8}}}) is None
    assert raw_chat({"message": {"chat": {"id": True}}}) is None
    assert raw_chat({"message": "x"}) is None
    assert raw_chat([1, 2]) is None


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["message", "chat", "id", "callback_query", "from", "update_id"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=8,
    )
)
def test_raw_chat_never_raises(raw: object) -> None:
    result = raw_chat(raw)
    assert result is None or isinstance(result, int)


def test_unparseable_and_screened_updates_keep_the_offset_moving() -> None:
    bot = IntakeBot("123:abc", on_poll=lambda _: None, screen=lambda raw: raw.get("keep", True))
    good = {
        "update_id": 1,
        "message": {
            "message_id": 1,
            "date": 0,
            "chat": {"id": 5, "type": "private"},
            "from": {"id": 5, "is_bot": False, "first_name": "A"},
            "text": "/help",
        },
    }
    broken = {"update_id": 2, "message": {"chat": "not a chat"}}
    screened = {"update_id": 3, "keep": False, "message": {}}
    parsed = bot._parse([good, broken, screened])
    assert [u.update_id for u in parsed] == [1, 3]
    assert parsed[0].message is not None and parsed[1].message is None
    assert bot._cw_placeholders == {3}
    tail = bot._parse([good, broken])
    assert [u.update_id for u in tail] == [1, 2] and tail[1].message is None
