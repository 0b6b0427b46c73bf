"""A broadcast to 1,000 users through the sender's bulk lane, within every Telegram limit."""

from __future__ import annotations

import asyncpg
import pytest

from tests.bot.support import until, world

pytestmark = pytest.mark.anyio

FIRST = 2_000_000
COUNT = 1_000


async def add_users(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.copy_records_to_table(
            "users",
            records=[(FIRST + i, f"u{i}") for i in range(COUNT)],
            columns=["chat_id", "username"],
        )
        await conn.execute("UPDATE users SET active = false WHERE chat_id = $1", FIRST)
        await conn.execute("UPDATE users SET locked = true WHERE chat_id = $1", FIRST + 1)
    finally:
        await conn.close()


async def test_broadcast_to_1000_users(redis_url: str, database_url: str) -> None:
    await add_users(database_url)
    async with world(redis_url, database_url, global_rate=500.0) as w:
        emu = w.emu
        extra = FIRST + COUNT
        await w.say(extra, "/start")

        reply = await w.admin("broadcast", text="News!")
        assert reply["ok"], reply
        # everyone but the inactive and the locked user, plus the one who came by /start
        assert reply["data"]["total"] == COUNT - 2 + 1
        # the last target (in chat order) blocks the bot after the broadcast began: the
        # sender meets a 403 for it
        last = FIRST + COUNT - 1
        emu.block(last)
        broadcast = reply["data"]["id"]
        seen: list[int] = []

        async def done() -> bool:
            status = await w.admin("broadcast_status", id=broadcast)
            seen.append(status["data"]["done"])
            return bool(status["data"]["state"] == "done")

        await until(done, 120, every=0.25)
        final = (await w.admin("broadcast_status", id=broadcast))["data"]
        assert final["sent"] == COUNT - 2 and final["blocked"] == 1
        assert final["failed"] == final["unconfirmed"] == 0
        assert seen == sorted(seen) and len(set(seen)) > 2  # progress was visible on the way

        news = [m for m in emu.sent() if m.text == "News!"]
        assert len(news) == COUNT - 2
        assert len({m.chat_id for m in news}) == COUNT - 2
        receivers = {m.chat_id for m in news}
        assert extra in receivers
        assert not receivers & {FIRST, FIRST + 1, last}
        assert emu.violations == {"global": 0, "private": 0, "group": 0}
        assert emu.counters.by_status.get(429, 0) == 0
