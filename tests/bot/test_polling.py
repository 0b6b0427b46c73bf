"""The embedded PTB application under its supervisor: bad input dropped and counted,
polling failures crash the bot and its restart is the reconnect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from actors.bot import STATS, TelegramBot
from messages.settings import Secret, TelegramSettings
from runtime import ActorSystem
from sandbox.telegram import TelegramEmulator
from supervisors import Backoff, Tree, supervisor, worker
from tests.bot.support import ADMIN, TOKEN, until
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def bot_alone(**options: Any) -> AsyncIterator[tuple[TelegramEmulator, Tree]]:
    """Just the bot (no sender: replies fail quietly) against the emulator."""
    emu = TelegramEmulator(token=TOKEN)
    await emu.start()
    telegram = TelegramSettings(
        bot_token=Secret(TOKEN), api_base_url=emu.base_url, admin_chat_ids=(ADMIN,), poll_timeout=1
    )
    spec = supervisor(
        "root",
        [worker("bot", TelegramBot, telegram=telegram, **options)],
        max_restarts=10,
        period=30,
        backoff=Backoff(initial=0.05, maximum=0.1, jitter=0.0),
    )
    try:
        async with Tree(spec, ActorSystem()).running() as tree:
            yield emu, tree
    finally:
        await emu.stop()


async def stats(tree: Tree) -> dict[str, int]:
    result: dict[str, int] = await tree.lookup("bot").ask(STATS)
    return result


async def test_oversize_group_and_bot_senders_are_dropped_and_counted() -> None:
    async with bot_alone() as (emu, tree):
        emu.push_message(1, "x" * 5000)
        emu.push_message(-100, "/start", user_id=2)
        emu.push_message(ADMIN, "/help")

        async def counted() -> bool:
            s = await stats(tree)
            return s.get("dropped.oversize") == 1 and s.get("dropped.not_private") == 1

        await until(counted)
        s = await stats(tree)
        assert s.get("handled.help") == 1 and s.get("handled.start") is None


async def test_polling_errors_crash_the_bot_and_the_restart_reconnects() -> None:
    async with bot_alone(max_poll_errors=2) as (emu, tree):
        emu.inject_error("getUpdates", 502, count=2)
        await eventually(lambda: tree.status().find("root/bot").restarts_total >= 1, 15)
        emu.push_message(ADMIN, "/help")
        await emu.wait_until(lambda: not emu.pending_updates(), 10)
        assert tree.status().find("root/bot").state == "running"


async def test_a_refused_token_crashes_the_bot() -> None:
    async with bot_alone() as (emu, tree):
        emu.inject_error("getUpdates", 401, count=1)
        await eventually(lambda: tree.status().find("root/bot").restarts_total >= 1, 10)
        assert "PollingFailed" in (tree.status().find("root/bot").last_error or "")
