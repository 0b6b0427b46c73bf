"""Commands as the bot front end sends them (through ``ask_users``) and what they change."""

from __future__ import annotations

import asyncpg
import pytest
import redis

from actors.store.handle import StoreHandle
from actors.user_directory import ask_users
from actors.user_store import settings_key
from messages.delivery import ChatBlocked
from messages.filters import DEFAULT_PRESETS, FilterSettings, decode_settings, encode_settings
from messages.settings import FilterSettingsSection
from messages.users import (
    ApplyPreset,
    GetSettings,
    GetStatus,
    GetTracked,
    ListPresets,
    NotRegistered,
    Pause,
    PresetList,
    Register,
    Resume,
    SetFilter,
    SettingsRejected,
    SettingsUpdated,
    SettingsView,
    TrackedList,
    UserStatus,
)
from runtime import ManualClock
from tests.helpers import eventually
from tests.users.support import Harness, add_user, channel, token_event

pytestmark = pytest.mark.anyio

STRONG = channel(1, 70.0, 4.0)


def harness(redis_url: str, database_url: str) -> Harness:
    return Harness(
        StoreHandle(redis_url, database_url), ManualClock(), FilterSettingsSection(shards=2)
    )


async def test_register_creates_the_user_with_default_settings(
    redis_url: str, database_url: str
) -> None:
    h = harness(redis_url, database_url)
    async with h.running():
        status = await ask_users(h.lookup, Register(chat_id=77, username="ann", first_name="Ann"))
        assert isinstance(status, UserStatus)
        assert status.created and status.reachable and not status.subscribed
        assert "Welcome" in status.message and "Subscribe" in status.message
        assert status.settings == FilterSettings()
        assert [r.field for r in status.rows][:2] == ["min_win_rate", "min_avg_gain"]

        again = await ask_users(h.lookup, Register(chat_id=77))
        assert isinstance(again, UserStatus) and not again.created

        unknown = await ask_users(h.lookup, GetStatus(78))
        assert isinstance(unknown, NotRegistered)
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT username, active FROM users WHERE chat_id = 77")
        assert row is not None and row["username"] == "ann" and row["active"]
        assert await conn.fetchval("SELECT count(*) FROM settings WHERE chat_id = 77") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("min_win_rate", "150", "Win rate must be between 0 and 100 %, you sent 150."),
        ("min_win_rate", "lots", "Win rate must be a number like 45 or 45%, you sent 'lots'."),
        ("fdv_min", "2m", "FDV minimum ($2,000,000) is above the maximum ($1,000,000)."),
        ("chains", "solanna", "Unknown chain 'solanna'."),
        ("lookback", "10s", "Lookback must be between 1 minute and 7 days, you sent 10s."),
        ("min_channels", "0", "Minimum channels must be between 1 and 50, you sent 0."),
        ("colour", "red", "Unknown setting 'colour'."),
    ],
)
async def test_refused_settings_come_back_with_a_message_and_change_nothing(
    redis_url: str, database_url: str, field: str, text: str, message: str
) -> None:
    await add_user(database_url, 5, FilterSettings(fdv_max=1_000_000.0))
    h = harness(redis_url, database_url)
    async with h.running():
        reply = await ask_users(h.lookup, SetFilter(chat_id=5, field=field, text=text))
        assert isinstance(reply, SettingsRejected)
        assert reply.message.startswith(message)
        view = await ask_users(h.lookup, GetSettings(5))
        assert isinstance(view, SettingsView)
        assert view.settings == FilterSettings(fdv_max=1_000_000.0)


async def test_a_change_is_saved_with_history_cached_and_reaches_the_shard(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 5, FilterSettings(min_win_rate=80.0))
    h = harness(redis_url, database_url)
    async with h.running():
        await h.stats(STRONG)
        await h.event(token_event("a", [(1, 10)], now=h.now))
        await h.settle([5])
        assert h.notified() == []  # 70 % < 80 %

        reply = await ask_users(h.lookup, SetFilter(chat_id=5, field="min_win_rate", text="65%"))
        assert isinstance(reply, SettingsUpdated)
        assert reply.changed == ("min_win_rate",)
        assert reply.message == "Minimum win rate is now 65 %."
        assert reply.settings.min_win_rate == 65.0

        await h.event(token_event("b", [(1, 10)], now=h.now))
        await h.settle([5])
        assert h.notified() == [(5, "solana:b")]

        same = await ask_users(h.lookup, SetFilter(chat_id=5, field="min_win_rate", text="65"))
        assert isinstance(same, SettingsUpdated) and same.changed == ()
        assert same.message.startswith("Nothing changed")

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT filters, version FROM settings WHERE chat_id = 5")
        assert row is not None and row["version"] == 2
        assert decode_settings(row["filters"]).min_win_rate == 65.0
        changes = await conn.fetch("SELECT dedup_key, before, after FROM settings_changes")
        assert [c["dedup_key"] for c in changes] == ["settings:5:2"]
        assert decode_settings(changes[0]["before"]).min_win_rate == 80.0
    finally:
        await conn.close()
    raw = redis.Redis.from_url(redis_url).get(settings_key(5))
    assert isinstance(raw, bytes) and raw.startswith(b"2 ")
    assert decode_settings(raw[2:]).min_win_rate == 65.0


async def test_settings_survive_a_restart(redis_url: str, database_url: str) -> None:
    await add_user(database_url, 5)
    first = harness(redis_url, database_url)
    async with first.running():
        await ask_users(first.lookup, SetFilter(chat_id=5, field="chains", text="sol, base"))
    second = harness(redis_url, database_url)
    async with second.running():
        view = await ask_users(second.lookup, GetSettings(5))
        assert isinstance(view, SettingsView)
        assert view.settings.chains == frozenset({"solana", "base"})


async def test_presets_listed_and_applied_keeping_the_paused_flag(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 5, FilterSettings(paused=True))
    custom = FilterSettings(min_win_rate=70.0, min_channels=4)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO presets (name, description, filters) VALUES ($1, $2, $3::jsonb)",
            "whales",
            "Four strong channels.",
            encode_settings(custom).decode(),
        )
    finally:
        await conn.close()
    h = harness(redis_url, database_url)
    async with h.running():
        listed = await ask_users(h.lookup, ListPresets())
        assert isinstance(listed, PresetList)
        names = [p.name for p in listed.presets]
        assert names == [*(p.name for p in DEFAULT_PRESETS), "whales"]

        applied = await ask_users(h.lookup, ApplyPreset(chat_id=5, name="Whales"))
        assert isinstance(applied, SettingsUpdated)
        assert applied.settings == custom.with_changes(paused=True)
        assert applied.message == "Preset whales applied."

        refused = await ask_users(h.lookup, ApplyPreset(chat_id=5, name="moon"))
        assert isinstance(refused, SettingsRejected)
        assert refused.message == "There is no preset called 'moon'."


async def test_pause_and_resume(redis_url: str, database_url: str) -> None:
    await add_user(database_url, 5)
    h = harness(redis_url, database_url)
    h.real_multipliers = True  # it answers /tracked
    async with h.running():
        await h.stats(STRONG)
        paused = await ask_users(h.lookup, Pause(5))
        assert isinstance(paused, SettingsUpdated) and paused.settings.paused
        await h.event(token_event("a", [(1, 10)], now=h.now))
        await h.settle([5])
        assert h.notified() == []

        resumed = await ask_users(h.lookup, Resume(5))
        assert isinstance(resumed, SettingsUpdated) and not resumed.settings.paused
        assert resumed.message == "Alerts resumed."
        await h.event(token_event("b", [(1, 10)], now=h.now))
        await h.settle([5])
        assert h.notified() == [(5, "solana:b")]

        tracked = await ask_users(h.lookup, GetTracked(chat_id=5))
        assert isinstance(tracked, TrackedList)
        assert [
            (t.token_key, t.chain, t.symbol, t.fdv_at_notify, t.notified_at) for t in tracked.tokens
        ] == [("solana:b", "solana", "TKN", 500_000.0, h.now)]


async def test_a_blocked_user_gets_nothing_until_they_start_again(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 5)
    h = harness(redis_url, database_url)
    async with h.running():
        await h.stats(STRONG)
        h.lookup("user:5").tell_nowait(ChatBlocked(5))  # what the sender does on a 403
        status = await ask_users(h.lookup, GetStatus(5))
        assert isinstance(status, UserStatus) and not status.reachable
        await h.event(token_event("a", [(1, 10)], now=h.now))
        await h.settle([5])
        assert h.notified() == []

        back = await ask_users(h.lookup, Register(chat_id=5))
        assert isinstance(back, UserStatus) and back.reachable and not back.created
        assert back.message.startswith("Welcome back")
        await h.event(token_event("b", [(1, 10)], now=h.now))
        await h.settle([5])
        assert h.notified() == [(5, "solana:b")]

    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT active FROM users WHERE chat_id = 5") is True
    finally:
        await conn.close()


async def test_a_user_without_an_actor_is_found_on_demand(
    redis_url: str, database_url: str
) -> None:
    await add_user(database_url, 6, active=False)  # blocked before the start: no actor
    h = harness(redis_url, database_url)
    async with h.running():
        with pytest.raises(LookupError):
            h.lookup("user:6")
        status = await ask_users(h.lookup, GetStatus(6))
        assert isinstance(status, UserStatus) and status.chat_id == 6 and not status.reachable
        await eventually(lambda: h.lookup("user:6").alive)
