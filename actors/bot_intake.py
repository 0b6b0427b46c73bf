"""How updates come into the bot: screened, rate limited, parsed, kept in order per chat.

`IntakeBot` is python-telegram-bot's `ExtBot` with a getUpdates that shows every raw update
to a screen (the per-chat `RateLimiter`) before PTB parses it, because parsing is the
expensive part of taking an update in; `ChatLocks` keeps one chat's updates in order while
different chats are handled concurrently. `raw_chat` finds the chat of a raw update.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any, Final

from cachetools import TTLCache
from prometheus_client import Counter
from telegram import Update
from telegram.error import TelegramError, TimedOut
from telegram.ext import ExtBot

__all__ = ["DROPPED", "ChatLocks", "IntakeBot", "RateLimiter", "Verdict", "raw_chat"]

DROPPED = Counter("callwatch_bot_updates_dropped", "Updates dropped before any handler", ["reason"])


# -- rate limiting ------------------------------------------------------------------------


class Verdict:
    OK: Final = "ok"
    WARN: Final = "warn"
    DROP: Final = "drop"


class RateLimiter:
    """A token bucket per chat (``burst`` presses, refilled at ``per_s``), plus the memory
    of whom we already warned in the current ``warn_window_s``.

    Idle buckets expire from a `TTLCache` once they would be full again, so memory stays
    bounded by the chats active in the last few seconds.
    """

    def __init__(
        self,
        burst: float,
        per_s: float,
        warn_window_s: float,
        clock: Callable[[], float],
        maxsize: int = 200_000,
    ) -> None:
        if burst < 1 or per_s <= 0:
            raise ValueError("burst must be >= 1 and per_s > 0")
        self.burst = float(burst)
        self.per_s = float(per_s)
        self.clock = clock
        self._buckets: TTLCache[int, tuple[float, float]] = TTLCache(
            maxsize, ttl=self.burst / self.per_s + 1.0, timer=clock
        )
        self._warned: TTLCache[int, bool] = TTLCache(maxsize, ttl=warn_window_s, timer=clock)

    def check(self, chat_id: int) -> str:
        now = self.clock()
        tokens, last = self._buckets.get(chat_id, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_s)
        if tokens >= 1.0:
            self._buckets[chat_id] = (tokens - 1.0, now)
            return Verdict.OK
        self._buckets[chat_id] = (tokens, now)
        if chat_id in self._warned:
            return Verdict.DROP
        self._warned[chat_id] = True
        return Verdict.WARN


class ChatLocks:
    """One FIFO lock per chat, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, chat_id: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(chat_id) or (asyncio.Lock(), 0)
        self._locks[chat_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[chat_id]
            if users <= 1:
                del self._locks[chat_id]
            else:
                self._locks[chat_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


# -- the PTB bot with lenient update parsing --------------------------------------------------


class IntakeBot(ExtBot[None]):
    """An `ExtBot` whose getUpdates filters before parsing and survives what PTB cannot parse.

    Parsing an update into PTB objects is the expensive part of taking it in, so the raw
    batch is first shown to the actor's ``screen`` (which applies the per-chat rate limit
    with a few dict lookups): a flood of updates from one chat then costs almost nothing.
    What is screened out, and what does not parse, becomes an empty `Update` with its id
    when it is the last of its batch, so PTB's offset still moves past it (a batch PTB
    fails to parse would otherwise be fetched again forever). Successful polls and the
    timeouts PTB keeps to itself are reported to ``on_poll``.
    """

    def __init__(
        self,
        token: str,
        *,
        on_poll: Callable[[TelegramError | None], None],
        screen: Callable[[Any], bool],
        **options: Any,
    ) -> None:
        super().__init__(token, **options)
        self._cw_on_poll = on_poll
        self._cw_screen = screen
        self._cw_placeholders: set[int] = set()

    async def get_updates(
        self,
        offset: int | None = None,
        limit: int | None = None,
        timeout: int | timedelta | None = None,
        allowed_updates: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[Update, ...]:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout or 0
        data: dict[str, Any] = {
            "offset": offset,
            "limit": limit,
            "timeout": int(seconds),
            "allowed_updates": list(allowed_updates) if allowed_updates is not None else None,
        }
        read_timeout = (self._request[0].read_timeout or 0.0) + seconds
        try:
            raw = await self._post("getUpdates", data, read_timeout=read_timeout)
        except TimedOut as exc:
            self._cw_on_poll(exc)
            raise
        self._cw_on_poll(None)
        return self._parse(raw if isinstance(raw, list) else [])

    def _parse(self, raw: list[Any]) -> tuple[Update, ...]:
        out: list[Update] = []
        last = len(raw) - 1
        for index, item in enumerate(raw):
            update: Update | None = None
            if self._cw_screen(item):
                try:
                    update = Update.de_json(item, self)
                except Exception:
                    update = None
                    DROPPED.labels("malformed").inc()
            if update is None and index == last:
                update_id = item.get("update_id") if isinstance(item, dict) else None
                if isinstance(update_id, int) and not isinstance(update_id, bool):
                    update = Update(update_id=update_id)
                    self._cw_placeholders.add(update_id)
            if update is not None:
                out.append(update)
        return tuple(out)


def raw_chat(raw: Any) -> int | None:
    """The chat a raw message or button press comes from; None for anything else."""
    if not isinstance(raw, dict):
        return None
    body = raw.get("message")
    if isinstance(body, dict):
        chat = body.get("chat")
    else:
        query = raw.get("callback_query")
        if not isinstance(query, dict):
            return None
        message = query.get("message")
        chat = message.get("chat") if isinstance(message, dict) else query.get("from")
    chat_id = chat.get("id") if isinstance(chat, dict) else None
    return chat_id if isinstance(chat_id, int) and not isinstance(chat_id, bool) else None
