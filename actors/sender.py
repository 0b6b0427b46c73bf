"""The sender: the only path from callwatch to Telegram.

Everything any actor wants to show a user arrives here as an :class:`Outbound`. The sender
writes it to a durable outbox in Redis, queues it in one of three lanes and sends it with
python-telegram-bot's plain :class:`telegram.Bot` (HTML parse mode; PTB's own rate limiter is
not used: it has no per-chat limit and is first-in first-out, so pacing lives here, once).
How the lanes, the pacing and the limits work is in :mod:`actors.sender_lanes`; the outbox
keys are in :mod:`actors.sender_outbox`.

How callers talk to it:

- ``await sender.ask(Outbound(lane=Lane.INTERACTIVE, ...))`` answers once Telegram accepted
  the message: :class:`Delivered` (chat id, message id). When it cannot be delivered the
  answer is :class:`ChatBlocked` (403) or :class:`DeliveryFailed` (with the reason), never an
  exception. The ask is answered later without holding up the mailbox, so thousands of asks
  can wait at once.
- ``sender.tell_nowait(Outbound(lane=Lane.ALERT | Lane.BULK, ...))`` for everything else.
- ``await sender.ask(SenderStats())`` returns a :class:`SenderStatus` (plain data).

What happens on Telegram's answers: 429 pauses every lane for ``retry_after`` and the message
goes first afterwards; 403 tells the chat's user actor (``user:<chat_id>``, else the user
directory) ``ChatBlocked`` and drops the chat's other pending alerts and bulk messages (an
interactive message, sent when the user writes again, lifts the block); ``BadRequest`` is never
retried ("message is not modified" answering an edit is a success); network errors and timeouts
are retried with backoff up to ``max_attempts``, then the message is recorded as failed with
its reason.

Durability: a message is written to the outbox before it can be sent and deleted once
Telegram answered for good. Just before each request its id is marked in flight. After a
crash of the sender or of the process, a new sender reloads the outbox; messages that were
marked in flight have an unknown fate (Telegram may have delivered them before the answer was
lost, and the Bot API offers no way to ask). They are counted (``sender.unknown_fate`` log
event, ``callwatch_sender_unknown_fate_total``) and sent once more: a rare duplicate is
preferred to a lost alert, and for edits a resend is harmless. Everything else that was
pending is sent exactly once. (A message Telegram accepted whose outbox entry was not yet
deleted when the process died is among the unknown: the count covers it.) ``dedup_key`` is
claimed in Redis (SET NX, 14 days) in the same script that writes the record, so a key is never
sent twice, across restarts too. A new sender waits one private interval before its first
request, because the pacing state of the one before it is gone. A graceful stop lets the
requests in flight land first, so it leaves no unknown fate.
"""

from __future__ import annotations

import contextlib
import secrets
import warnings
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec
import structlog
from cachetools import TTLCache
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError
from telegram import Bot
from telegram.constants import ParseMode
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from actors.sender_lanes import Dispatch, Pending, Scheduler, plain_length, retry_delay, wait_event
from actors.sender_outbox import Outbox, Record
from actors.store.handle import StoreHandle, StoreUnavailable
from messages.delivery import (
    MAX_CAPTION,
    MAX_TEXT,
    ChatBlocked,
    Delivered,
    DeliveryFailed,
    Lane,
    Outbound,
    Outbounds,
    SenderStats,
    SenderStatus,
)
from messages.settings import SenderSettings, TelegramSettings
from messages.system import Terminated
from runtime import Actor, ActorFailed, ActorStopped, MailboxSpec, NameNotFound
from runtime.mailbox import STOP
from runtime.reply import Reply

__all__ = ["Sender", "retry_after_seconds"]

log = structlog.get_logger(__name__)

SAVE_BATCH = 500
UNSAVED_LIMIT = 20_000
"""Stop reading the mailbox while this many messages wait for the outbox (Redis is slow or
away): the bounded mailbox then pushes back on the callers."""
RECENT_FAILURES = 50
BLOCKED_MEMORY_S = 3_600.0
STORE_BACKOFF = (0.1, 2.0)
KINDS = frozenset({"message", "notification", "multiplier", "broadcast", "report", "digest"})
_STORE_ERRORS = (StoreUnavailable, RedisError, OSError)

# --- metrics (process-wide; never a chat id as a label) -------------------------------------

SENT = Counter(
    "callwatch_sender_sent", "Telegram requests that succeeded (a digest once)", ["lane", "kind"]
)
DELIVERED = Counter(
    "callwatch_sender_delivered", "Outbound messages delivered (digest parts count)", ["lane"]
)
RATE_LIMITED = Counter("callwatch_sender_rate_limited", "429 answers from Telegram")
BLOCKED = Counter("callwatch_sender_blocked", "403 answers: chats that blocked the bot")
DROPPED = Counter("callwatch_sender_dropped", "Messages dropped before sending", ["reason"])
FAILED = Counter("callwatch_sender_failed", "Messages given up on", ["reason"])
RETRIED = Counter("callwatch_sender_retried", "Retries after network errors and timeouts")
UNKNOWN_FATE = Counter(
    "callwatch_sender_unknown_fate", "Messages in flight when the previous sender died"
)
COALESCED = Counter("callwatch_sender_coalesced", "Alerts merged into a digest")
STORE_ERRORS = Counter("callwatch_sender_store_errors", "Outbox operations that failed", ["op"])
QUEUE_SECONDS = Histogram(
    "callwatch_sender_queue_seconds",
    "From acceptance to Telegram's answer",
    ["lane"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2.5, 5, 10, 30, 60, 300, 1800),
)
REQUEST_SECONDS = Histogram(
    "callwatch_sender_request_seconds",
    "Bot API round trips",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUED = Gauge("callwatch_sender_queued", "Messages waiting per lane", ["lane"])
IN_FLIGHT = Gauge("callwatch_sender_in_flight", "Bot API requests on the wire")


def retry_after_seconds(error: RetryAfter) -> float:
    """``retry_after`` in seconds, whether PTB gives an int or (PTB_TIMEDELTA) a timedelta."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: Any = error.retry_after
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    return max(0.0, float(value))


class Sender(Actor):
    """Lanes, pacing, limits, retries and the durable outbox in front of the Bot API."""

    mailbox = MailboxSpec(capacity=100_000)

    def __init__(
        self,
        store: StoreHandle,
        settings: SenderSettings | None = None,
        telegram: TelegramSettings | None = None,
        base_url: str = "",
        base_file_url: str = "",
        blocked_fallback: str = "user-directory",
    ) -> None:
        """``blocked_fallback`` is told ``ChatBlocked`` for chats without a ``user:<id>``
        actor (the user directory marks them inactive in the database)."""
        self.settings = settings or SenderSettings()
        self.blocked_fallback = blocked_fallback
        self.telegram = telegram or TelegramSettings()
        self.base_url = base_url or self.telegram.api_base_url
        self.base_file_url = base_file_url
        s = self.settings
        self.outbox = Outbox(store, s.namespace, int(s.dedup_ttl_days * 86_400))
        self.scheduler = Scheduler(
            global_rate=s.global_rate,
            private_interval=s.private_interval,
            group_per_minute=s.group_per_minute,
            in_flight=s.in_flight,
            aging_s=s.aging_s,
            private_margin=s.private_margin,
            group_margin=s.group_margin,
            global_margin=s.global_margin,
            aged_share=s.aged_share,
            one_way_share=s.one_way_share,
        )
        self.bot: Bot | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._unsaved: list[tuple[Record, Pending]] = []
        self._waiters: dict[str, Reply] = {}
        self._done: list[str] = []
        self._not_sent: list[str] = []
        self._wake = anyio.Event()
        self._persist_wake = anyio.Event()
        self._cleanup_wake = anyio.Event()
        self._room = anyio.Event()
        self._landed = anyio.Event()
        self._blocked: TTLCache[int, bool] | None = None
        self._closing = False
        self._seq = 0
        self._recent: deque[DeliveryFailed] = deque(maxlen=RECENT_FAILURES)
        self.counts: dict[str, int] = dict.fromkeys(
            (
                "accepted",
                "delivered",
                "rate_limited",
                "blocked",
                "dropped",
                "failed",
                "retried",
                "duplicates",
                "coalesced",
                "unknown_fate",
                "store_errors",
            ),
            0,
        )
        self.sent_by_lane: dict[Lane, int] = dict.fromkeys(Lane, 0)

    # --- lifecycle ---------------------------------------------------------------------------

    async def started(self) -> None:
        token = self.telegram.bot_token
        if token is None or not token.reveal():
            raise RuntimeError("no Telegram bot token configured (telegram.bot_token)")
        self._blocked = TTLCache(
            maxsize=100_000, ttl=BLOCKED_MEMORY_S, timer=self.ctx.clock.monotonic
        )
        s = self.settings
        timeout = s.request_timeout
        request = HTTPXRequest(
            connection_pool_size=s.connection_pool or s.in_flight + 2,
            read_timeout=timeout,
            write_timeout=timeout,
            connect_timeout=min(timeout, 5.0),
            pool_timeout=timeout,
            media_write_timeout=max(20.0, timeout),
        )
        options: dict[str, Any] = {"request": request}
        if self.base_url:
            options["base_url"] = self.base_url
        if self.base_file_url:
            options["base_file_url"] = self.base_file_url
        bot = Bot(token.reveal(), **options)
        await bot.initialize()
        self.bot = bot
        await self._reload()
        quiet = self.settings.start_quiet_s
        if quiet is None:
            quiet = self.settings.private_interval + self.settings.private_margin
        if quiet > 0:
            # A previous sender (or process) may have sent to these chats a moment ago, and
            # its pacing state died with it.
            self.scheduler.pause(self.ctx.clock.monotonic() + quiet)
        for lane in Lane:
            QUEUED.labels(lane.name.lower()).set_function(self._depth_of(lane))
        IN_FLIGHT.set_function(lambda: float(self.scheduler.in_flight))

    def _depth_of(self, lane: Lane) -> Callable[[], float]:
        return lambda: float(self.scheduler.depth()[lane])

    async def _reload(self) -> None:
        loaded = await self.outbox.load()
        clock = self.ctx.clock
        now, wall = clock.monotonic(), clock.wall()
        for record in loaded.records:
            self._seq = max(self._seq, record.seq)
            p = Pending(
                record.id,
                record.outbound,
                now - max(0.0, wall - record.accepted_at),
                record.seq,
                plain_length(record.outbound.text),
            )
            self.scheduler.add(p, now)
        unknown = len(loaded.unknown_fate)
        if unknown:
            self.counts["unknown_fate"] += unknown
            UNKNOWN_FATE.inc(unknown)
            log.warning(
                "sender.unknown_fate",
                count=unknown,
                ids=sorted(loaded.unknown_fate)[:20],
                action="resent once",
            )
        if loaded.records:
            log.info(
                "sender.outbox_reloaded",
                pending=len(loaded.records),
                unknown_fate=unknown,
                corrupt=loaded.corrupt,
            )

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._dispatch_loop)
            tg.start_soon(self._persist_loop)
            tg.start_soon(self._cleanup_loop)
            await self._serve_mailbox()
            await self._drain()
            tg.cancel_scope.cancel()
        # The loops are gone, so nothing else touches the buffers now.
        with contextlib.suppress(*_STORE_ERRORS):
            while self._unsaved:
                await self._save_batch()
        with contextlib.suppress(*_STORE_ERRORS):
            await self._flush_cleanup()

    async def stopped(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for reply in waiters.values():
            reply.fail(ActorStopped(self.ctx.path))
        bot, self.bot = self.bot, None
        if bot is not None:
            with contextlib.suppress(Exception):
                await bot.shutdown()

    async def _drain(self) -> None:
        """Graceful stop: send nothing new and let the requests in flight land."""
        self._closing = True
        self._wake.set()
        clock = self.ctx.clock
        deadline = clock.monotonic() + self.settings.drain_s
        while self.scheduler.in_flight and clock.monotonic() < deadline:
            self._landed = anyio.Event()
            await wait_event(self._landed, clock, deadline)

    # --- the mailbox -------------------------------------------------------------------------

    async def _serve_mailbox(self) -> None:
        """The message loop, reading the mailbox itself so an asked Outbound can be answered
        when Telegram answers, without holding up the messages behind it.

        (The runtime answers an ask with ``receive``'s return value; this loop keeps the
        runtime's contract otherwise: ready signal, processed count, crash on error.)
        """
        cell = self.ctx._cell
        mailbox = cell.mailbox
        self.ctx.ready()
        batch = 0
        while True:
            while len(self._unsaved) >= UNSAVED_LIMIT:
                self._room = anyio.Event()
                await self._room.wait()
            got = await mailbox.get()
            if got is STOP:
                return
            message, reply, _ = got  # type: ignore[misc]
            answer = reply if isinstance(reply, Reply) else None
            if isinstance(message, Outbound):
                self._accept(message, answer)
            elif isinstance(message, Outbounds):
                for item in message.items:
                    self._accept(item, None)
                if answer is not None:
                    answer.set(None)
            else:
                try:
                    result = await self.receive(message)
                except Exception as exc:
                    if answer is not None:
                        answer.fail(ActorFailed(cell.path, exc))
                    raise
                if answer is not None:
                    answer.set(result)
            cell.processed += 1
            batch += 1
            if batch >= 128:
                batch = 0
                await anyio.lowlevel.checkpoint()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, SenderStats):
            return self.status()
        if isinstance(message, Terminated):
            return None
        log.warning("sender.unexpected_message", type=type(message).__name__)
        return None

    def status(self) -> SenderStatus:
        clock = self.ctx.clock
        now = clock.monotonic()
        paused = self.scheduler.paused_until
        c = self.counts
        return SenderStatus(
            queued={lane.name.lower(): n for lane, n in self.scheduler.depth().items()},
            unsaved=len(self._unsaved),
            in_flight=self.scheduler.in_flight,
            accepted=c["accepted"],
            paused_until=clock.wall() + (paused - now) if paused > now else None,
            sent={lane.name.lower(): n for lane, n in self.sent_by_lane.items()},
            delivered=c["delivered"],
            rate_limited=c["rate_limited"],
            blocked=c["blocked"],
            dropped=c["dropped"],
            failed=c["failed"],
            retried=c["retried"],
            duplicates=c["duplicates"],
            coalesced=c["coalesced"],
            unknown_fate=c["unknown_fate"],
            store_errors=c["store_errors"],
            recent_failures=tuple(self._recent),
        )

    # --- accepting ---------------------------------------------------------------------------

    def _accept(self, o: Outbound, reply: Reply | None) -> None:
        try:
            # Outbound is built in-process without validation: check the types here (and
            # turn a plain int lane into a Lane), so bad input is refused, never a crash.
            o = msgspec.convert(msgspec.structs.asdict(o), Outbound)
        except msgspec.ValidationError as exc:
            self._drop_one(o, "invalid", f"invalid message: {exc}", reply)
            return
        reason = self._invalid(o)
        if reason is not None:
            self._drop_one(o, "invalid", reason, reply)
            return
        if o.lane is Lane.INTERACTIVE:
            self._unblock(o.chat_id)
        elif self._is_blocked(o.chat_id):
            self._drop_one(o, "blocked_chat", "the chat blocked the bot", reply)
            return
        clock = self.ctx.clock
        self._seq += 1
        record = Record(
            id=secrets.token_hex(10), outbound=o, accepted_at=clock.wall(), seq=self._seq
        )
        size = plain_length(o.text)
        self._unsaved.append((record, Pending(record.id, o, clock.monotonic(), self._seq, size)))
        if reply is not None:
            self._waiters[record.id] = reply
        self._persist_wake.set()

    @staticmethod
    def _invalid(o: Outbound) -> str | None:
        """Why Telegram would surely refuse this message, else None."""
        if o.chat_id == 0:
            return "chat_id must not be 0"
        size = plain_length(o.text)
        if o.photo is not None:
            if o.edit_message_id is not None:
                return "a photo cannot be sent as an edit"
            if size > MAX_CAPTION:
                return f"caption too long ({size} > {MAX_CAPTION})"
            return None
        if not o.text.strip() or size == 0:
            return "empty text"
        if size > MAX_TEXT:
            return f"text too long ({size} > {MAX_TEXT})"
        return None

    def _drop_one(self, o: Outbound, why: str, reason: str, reply: Reply | None) -> None:
        DROPPED.labels(why).inc()
        self.counts["dropped"] += 1
        if why == "blocked_chat":
            if reply is not None:
                reply.set(ChatBlocked(o.chat_id))
            return
        failure = DeliveryFailed(o.chat_id, o.kind, reason)
        self._recent.append(failure)
        log.warning("sender.rejected", chat_id=o.chat_id, kind=o.kind, reason=reason)
        if reply is not None:
            reply.set(failure)

    def _is_blocked(self, chat_id: int) -> bool:
        return self._blocked is not None and chat_id in self._blocked

    def _unblock(self, chat_id: int) -> None:
        if self._blocked is not None:
            self._blocked.pop(chat_id, None)

    async def _persist_loop(self) -> None:
        clock = self.ctx.clock
        delay = STORE_BACKOFF[0]
        while True:
            while not self._unsaved:
                self._persist_wake = anyio.Event()
                await self._persist_wake.wait()
            try:
                await self._save_batch()
            except _STORE_ERRORS as exc:
                self._store_error("save", exc)
                await clock.sleep(delay)
                delay = min(STORE_BACKOFF[1], delay * 2)
                continue
            delay = STORE_BACKOFF[0]

    async def _save_batch(self) -> None:
        batch = self._unsaved[:SAVE_BATCH]
        saved = await self.outbox.save([record for record, _ in batch])
        del self._unsaved[: len(batch)]
        if len(self._unsaved) < UNSAVED_LIMIT:
            self._room.set()
        now = self.ctx.clock.monotonic()
        for (record, p), ok in zip(batch, saved, strict=True):
            o = record.outbound
            if not ok:
                DROPPED.labels("duplicate").inc()
                self.counts["duplicates"] += 1
                self._answer(record.id, DeliveryFailed(o.chat_id, o.kind, "duplicate"))
            elif o.lane is not Lane.INTERACTIVE and self._is_blocked(o.chat_id):
                DROPPED.labels("blocked_chat").inc()
                self.counts["dropped"] += 1
                self._done.append(record.id)
                self._answer(record.id, ChatBlocked(o.chat_id))
            else:
                self.counts["accepted"] += 1
                self.scheduler.add(p, now)
        self._cleanup_wake.set()
        self._wake.set()

    # --- dispatching -------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        scheduler = self.scheduler
        clock = self.ctx.clock
        tg = self._tg
        assert tg is not None
        while True:
            self._wake = anyio.Event()
            wake_at: float | None = None
            if not self._closing:
                now = clock.monotonic()
                batch: list[Dispatch] = []
                while True:
                    step = scheduler.next(now)
                    if not isinstance(step, Dispatch):
                        wake_at = step
                        break
                    batch.append(step)
                if batch:
                    tg.start_soon(self._launch, batch)
            await wait_event(self._wake, clock, wake_at)

    async def _launch(self, batch: list[Dispatch]) -> None:
        """Mark a batch in flight (one round trip), then put each request on the wire."""
        try:
            await self.outbox.mark_in_flight(
                [p.id for d in batch for p in d.items], self.ctx.clock.wall()
            )
        except _STORE_ERRORS as exc:
            self._store_error("mark_in_flight", exc)
        tg = self._tg
        assert tg is not None
        for d in batch[1:]:
            tg.start_soon(self._send, d)
        await self._send(batch[0])

    async def _send(self, d: Dispatch) -> None:
        clock = self.ctx.clock
        start = clock.monotonic()
        try:
            message_id = await self._request(d)
        except RetryAfter as exc:
            self._rate_limited(d, start, retry_after_seconds(exc))
        except Forbidden as exc:
            self._complete(d, start)
            self._chat_blocked(d, exc.message)
        except BadRequest as exc:
            self._complete(d, start)
            self._bad_request(d, exc.message)
        except NetworkError as exc:  # TimedOut included; BadRequest handled above
            self._complete(d, start)
            self._retry_or_fail(d, f"{type(exc).__name__}: {exc.message}")
        except ChatMigrated as exc:
            self._complete(d, start)
            self._fail(d.items, "telegram", f"chat migrated to {exc.new_chat_id}")
        except InvalidToken:
            self._complete(d, start)
            raise
        except TelegramError as exc:
            self._complete(d, start)
            self._fail(d.items, "telegram", f"{type(exc).__name__}: {exc.message}")
        except Exception as exc:
            self._complete(d, start)
            log.exception("sender.unexpected_error", chat_id=d.chat_id)
            self._retry_or_fail(d, f"{type(exc).__name__}: {exc}")
        else:
            self._complete(d, start)
            self._delivered(d, message_id)
        finally:
            self._landed.set()
            self._wake.set()

    async def _request(self, d: Dispatch) -> int:
        bot = self.bot
        assert bot is not None
        o = d.head.outbound
        extra = {"reply_markup": o.reply_markup} if o.reply_markup is not None else None
        if o.edit_message_id is not None:
            await bot.edit_message_text(
                d.text,
                chat_id=d.chat_id,
                message_id=o.edit_message_id,
                parse_mode=ParseMode.HTML,
                api_kwargs=extra,
            )
            return o.edit_message_id
        if o.photo is not None:
            sent = await bot.send_photo(
                d.chat_id,
                o.photo,
                caption=o.text or None,
                parse_mode=ParseMode.HTML if o.text else None,
                api_kwargs=extra,
            )
            return sent.message_id
        sent = await bot.send_message(
            d.chat_id, d.text, parse_mode=ParseMode.HTML, api_kwargs=extra
        )
        return sent.message_id

    def _complete(self, d: Dispatch, start: float) -> None:
        now = self.ctx.clock.monotonic()
        rtt = now - start
        REQUEST_SECONDS.observe(rtt)
        self.scheduler.complete(d, now, rtt)

    # --- outcomes ----------------------------------------------------------------------------

    def _delivered(self, d: Dispatch, message_id: int) -> None:
        now = self.ctx.clock.monotonic()
        lane = d.lane
        kind = "digest" if len(d.items) > 1 else d.head.outbound.kind
        SENT.labels(lane.name.lower(), kind if kind in KINDS else "other").inc()
        self.sent_by_lane[lane] += 1
        self.counts["delivered"] += len(d.items)
        if len(d.items) > 1:
            self.counts["coalesced"] += len(d.items) - 1
            COALESCED.inc(len(d.items) - 1)
        answer = Delivered(d.chat_id, message_id)
        for p in d.items:
            DELIVERED.labels(p.lane.name.lower()).inc()
            QUEUE_SECONDS.labels(p.lane.name.lower()).observe(now - p.enqueued)
            self._done.append(p.id)
            self._answer(p.id, answer)
        self._cleanup_wake.set()

    def _rate_limited(self, d: Dispatch, start: float, retry_after: float) -> None:
        self._complete(d, start)
        now = self.ctx.clock.monotonic()
        self.scheduler.pause(now + retry_after)
        self.scheduler.requeue(d.items, now, first=True)
        self._not_sent.extend(p.id for p in d.items)
        self._cleanup_wake.set()
        self.counts["rate_limited"] += 1
        RATE_LIMITED.inc()
        log.warning("sender.rate_limited", retry_after=retry_after, chat_id=d.chat_id)

    def _chat_blocked(self, d: Dispatch, description: str) -> None:
        chat_id = d.chat_id
        dropped = self.scheduler.drop_chat(chat_id)
        if self._blocked is not None:
            self._blocked[chat_id] = True
        self.counts["blocked"] += 1
        BLOCKED.inc()
        if dropped:
            self.counts["dropped"] += len(dropped)
            DROPPED.labels("blocked_chat").inc(len(dropped))
        answer = ChatBlocked(chat_id)
        for p in (*d.items, *dropped):
            self._done.append(p.id)
            self._answer(p.id, answer)
        self._cleanup_wake.set()
        log.info("sender.chat_blocked", chat_id=chat_id, dropped=len(dropped), reason=description)
        for name in (f"user:{chat_id}", self.blocked_fallback):
            try:
                self.ctx.lookup(name).tell_nowait(answer)
            except NameNotFound:
                continue
            return

    def _bad_request(self, d: Dispatch, description: str) -> None:
        lowered = description.lower()
        if d.head.outbound.edit_message_id is not None and "message is not modified" in lowered:
            self._delivered(d, d.head.outbound.edit_message_id)
            return
        if len(d.items) > 1:
            # One bad part must not sink the others: send them one by one.
            self.scheduler.requeue(d.items, self.ctx.clock.monotonic(), solo=True)
            return
        self._fail(d.items, "bad_request", description)

    def _retry_or_fail(self, d: Dispatch, reason: str) -> None:
        now = self.ctx.clock.monotonic()
        retry: list[Pending] = []
        give_up: list[Pending] = []
        for p in d.items:
            p.attempts += 1
            (retry if p.attempts < self.settings.max_attempts else give_up).append(p)
        if retry:
            attempt = max(p.attempts for p in retry)
            delay = retry_delay(attempt, self.settings.retry_initial_s, self.settings.retry_max_s)
            self.scheduler.requeue(retry, now, not_before=now + delay)
            self.counts["retried"] += len(retry)
            RETRIED.inc(len(retry))
            log.info("sender.retry", chat_id=d.chat_id, attempt=attempt, delay=delay, reason=reason)
        if give_up:
            self._fail(give_up, "network", f"{reason} (after {self.settings.max_attempts} tries)")

    def _fail(self, items: list[Pending], category: str, reason: str) -> None:
        for p in items:
            o = p.outbound
            failure = DeliveryFailed(o.chat_id, o.kind, reason)
            self._recent.append(failure)
            self.counts["failed"] += 1
            FAILED.labels(category).inc()
            self._done.append(p.id)
            self._answer(p.id, failure)
            log.warning("sender.delivery_failed", chat_id=o.chat_id, kind=o.kind, reason=reason)
        self._cleanup_wake.set()

    def _answer(self, message_id: str, answer: object) -> None:
        reply = self._waiters.pop(message_id, None)
        if reply is not None:
            reply.set(answer)

    # --- outbox housekeeping -----------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        clock = self.ctx.clock
        delay = STORE_BACKOFF[0]
        while True:
            while not self._done and not self._not_sent:
                self._cleanup_wake = anyio.Event()
                await self._cleanup_wake.wait()
            try:
                await self._flush_cleanup()
            except _STORE_ERRORS as exc:
                self._store_error("finish", exc)
                await clock.sleep(delay)
                delay = min(STORE_BACKOFF[1], delay * 2)
                continue
            delay = STORE_BACKOFF[0]

    async def _flush_cleanup(self) -> None:
        done, self._done = self._done, []
        not_sent, self._not_sent = self._not_sent, []
        try:
            await self.outbox.finish(done, not_sent)
        except BaseException:
            self._done[:0] = done
            self._not_sent[:0] = not_sent
            raise

    def _store_error(self, op: str, exc: BaseException) -> None:
        self.counts["store_errors"] += 1
        STORE_ERRORS.labels(op).inc()
        log.warning("sender.store_error", op=op, error=f"{type(exc).__name__}: {exc}")
