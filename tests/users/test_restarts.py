"""State survives the restart of any one actor of the flow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from actors.filter_batch import FactsBatch
from actors.store.handle import StoreHandle
from actors.user import UserActor
from actors.user_directory import ask_users
from messages.filters import FilterSettings
from messages.settings import FilterSettingsSection
from messages.users import GetSettings, GetStatus, SetFilter, SettingsView
from runtime import ManualClock
from tests.users.support import Harness, add_user, channel, token_event

pytestmark = pytest.mark.anyio

STRONG, MEDIUM = channel(1, 70.0, 4.0), channel(2, 50.0, 2.0)


async def until(h: Harness, condition: Callable[[], bool]) -> None:
    """Wait for ``condition``, moving the test clock on (supervisors back off on it)."""
    with anyio.fail_after(10):
        while not condition():
            await h.clock.advance(0.5)
            await anyio.sleep(0.01)


def restarts(h: Harness, name: str) -> int:
    assert h.tree is not None

    def walk(node: Any) -> int | None:
        if node.name == name:
            return int(node.restarts_total)
        for child in node.children:
            found = walk(child)
            if found is not None:
                return found
        return None

    found = walk(h.tree.status())
    assert found is not None, name
    return found


async def test_a_crashed_user_actor_comes_back_with_its_current_settings(
    redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = UserActor._status

    def crash_once(self: UserActor, message: str = "") -> Any:
        monkeypatch.setattr(UserActor, "_status", status)
        raise RuntimeError("injected crash")

    await add_user(database_url, 5, FilterSettings(min_win_rate=80.0))
    h = Harness(
        StoreHandle(redis_url, database_url), ManualClock(), FilterSettingsSection(shards=2)
    )
    async with h.running():
        await h.stats(STRONG, MEDIUM)
        await ask_users(h.lookup, SetFilter(chat_id=5, field="min_win_rate", text="60"))
        user = h.lookup("user:5")
        monkeypatch.setattr(UserActor, "_status", crash_once)
        user.tell_nowait(GetStatus(5))
        await until(h, lambda: restarts(h, "user:5") == 1 and user.state == "running")

        view = await ask_users(h.lookup, GetSettings(5))
        assert isinstance(view, SettingsView) and view.settings.min_win_rate == 60.0
        await h.event(token_event("a", [(1, 10)], now=h.now))  # 70 % passes 60 %, not 80 %
        await h.settle([5])
        assert h.notified() == [(5, "solana:a")]


async def test_a_crashed_shard_is_refilled_and_nothing_is_told_twice(
    redis_url: str, database_url: str
) -> None:
    for user in (4, 5):
        await add_user(database_url, user)
    h = Harness(
        StoreHandle(redis_url, database_url), ManualClock(), FilterSettingsSection(shards=2)
    )
    async with h.running():
        await h.stats(STRONG, MEDIUM)
        await h.event(token_event("a", [(1, 10)], now=h.now))
        await h.settle([4, 5])
        assert sorted(h.notified()) == [(4, "solana:a"), (5, "solana:a")]

        broken = FactsBatch([], {}, h.now)
        broken.rated = (None,)  # type: ignore[assignment]
        h.lookup("filter-shard-0").tell_nowait(broken)
        # rest_for_one: the users and the directory come back after it and refill it
        await until(
            h,
            lambda: (
                restarts(h, "filter-shard-0") == 1
                and all(h.lookup(n).state == "running" for n in ("user-directory", "notify-gate"))
            ),
        )
        await h.stats(STRONG, MEDIUM)

        await h.event(token_event("a", [(1, 10), (2, 5)], now=h.now))  # new channel: checked
        await h.event(token_event("b", [(1, 10)], now=h.now))
        await h.settle([4, 5])
        assert sorted(h.notified()) == [
            (4, "solana:a"),
            (4, "solana:b"),
            (5, "solana:a"),
            (5, "solana:b"),
        ]
