"""The sender's scheduling as pure bookkeeping: lanes, aging, per-chat pacing, the global limit.

No I/O and no clock of its own: every method takes ``now`` (monotonic seconds), so tests drive it
with a :class:`~runtime.ManualClock` on asyncio and trio, and the actor only adds the wire.

Why the limits can never be broken, whatever the network jitter. The server counts a message at
the moment it handles it, somewhere between our issuing the request (``t``) and our reading the
answer (``c``). If every request spends at least ``h`` seconds on each leg, a request issued at
``t`` is counted no earlier than ``t + h`` and one completed at ``c`` was counted no later than
``c - h``. So an earlier request stops counting against a window of ``W`` seconds for every
request issued from ``c - 2h + W`` on, and a request still in flight counts until it completes.
``h`` is ``one_way_share`` times the smallest recent round trip. The default share is 0, which
assumes nothing and is provably safe: each request then holds its place in the window for one
round trip longer than the window itself, a few per cent of the rate at ordinary latencies (the
requests in flight keep the pipe full meanwhile). A share up to 0.5 buys that back on a network
path known to be symmetric, but it is unsafe when our own event loop is saturated: then the
round trip is mostly time spent waiting to be sent, not on the wire back, and measured legs of
a millisecond against a 26 ms minimum round trip broke the limit in a test. A token bucket on
top spreads the sends through each second, so an interactive reply never waits behind a burst.
The small margins added to each window cover clock granularity (uvloop's clock reads up to 1 ms
behind the monotonic clock a server would use); ``private_margin`` is wider (1.05 s in all), as
Telegram's per-chat limit is the one most easily brushed.

Priority: a message that was refused with 429 goes first; then interactive replies; then alerts
and bulk messages in one deadline order where a bulk message counts as an alert queued
``aging_s`` later: alerts overtake fresh bulk, and bulk that has waited ``aging_s`` competes with
alerts as an equal, so neither starves. Interactive replies stay ahead of both (a reply to
something a user just did must not wait behind a 10,000-message broadcast), but when aged
messages wait, one send slot in ``1/aged_share`` goes to them, so even a flood of replies cannot
starve them.

Per chat, messages wait while the chat is paced or has a request in flight; other chats keep
going (no head-of-line blocking). Backed-up alerts with the same ``digest_key`` leave as one
digest of at most 4096 characters.
"""

from __future__ import annotations

import bisect
import heapq
import html
import math
import re
from collections import deque
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel

from messages.delivery import MAX_TEXT, Lane, Outbound
from runtime.clock import Clock

__all__ = [
    "DIGEST_SEPARATOR",
    "GLOBAL_WINDOW",
    "GROUP_WINDOW",
    "Dispatch",
    "Pending",
    "Scheduler",
    "SlidingMin",
    "plain_length",
    "retry_delay",
    "wait_event",
]

GLOBAL_WINDOW = 1.0
GROUP_WINDOW = 60.0
RTT_SAMPLES = 256
DIGEST_SEPARATOR = "\n\n"

_TAG = re.compile(r"<[^>]*>")

Rank = tuple[int, float, int]


def plain_length(text: str) -> int:
    """Length of an HTML text as Telegram counts it: tags removed, entities decoded, UTF-16."""
    plain = html.unescape(_TAG.sub("", text))
    return len(plain.encode("utf-16-le")) // 2


def retry_delay(attempt: int, initial: float, maximum: float) -> float:
    """Backoff before retry number ``attempt`` (1-based) after a network error."""
    return min(maximum, initial * math.pow(2.0, max(0, attempt - 1)))


@dataclass(slots=True, eq=False)
class Pending:
    """One accepted message waiting for Telegram."""

    id: str
    outbound: Outbound
    enqueued: float
    """Monotonic time it was accepted (aging and queue-time metrics)."""
    seq: int
    """Arrival order; ties and digest order."""
    size: int
    """Plain length of the text, for the digest budget."""
    attempts: int = 0
    first: bool = False
    """Refused with 429: goes before everything else."""
    solo: bool = False
    """Never merged into a digest (its digest was refused as a whole once)."""

    @property
    def lane(self) -> Lane:
        return self.outbound.lane

    @property
    def coalescible(self) -> bool:
        o = self.outbound
        return (
            o.lane is Lane.ALERT
            and o.digest_key is not None
            and o.photo is None
            and o.edit_message_id is None
            and o.reply_markup is None
            and not self.solo
        )


@dataclass(slots=True, eq=False)
class Dispatch:
    """What to send now: one message, or a digest of several alerts for one chat."""

    chat_id: int
    items: list[Pending]
    issued: float

    @property
    def head(self) -> Pending:
        return self.items[0]

    @property
    def lane(self) -> Lane:
        return min(p.lane for p in self.items)

    @property
    def text(self) -> str:
        if len(self.items) == 1:
            return self.items[0].outbound.text
        return DIGEST_SEPARATOR.join(p.outbound.text for p in self.items)


class SlidingMin:
    """Minimum of the last ``size`` samples in O(1) amortised (a monotonic queue)."""

    __slots__ = ("_count", "_items", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._count = 0
        self._items: deque[tuple[int, float]] = deque()

    def add(self, value: float) -> None:
        self._count += 1
        items = self._items
        while items and items[-1][1] >= value:
            items.pop()
        items.append((self._count, value))
        while items[0][0] <= self._count - self._size:
            items.popleft()

    @property
    def value(self) -> float:
        """The minimum, or 0.0 before the first sample (the conservative choice)."""
        return self._items[0][1] if self._items else 0.0


@dataclass(slots=True, eq=False)
class _Chat:
    id: int
    heap: list[tuple[Rank, Pending]] = field(default_factory=list)
    busy: bool = False
    ready_at: float = 0.0
    version: int = 0
    releases: list[float] = field(default_factory=list)
    """Groups: when each recent request stops counting against the per-minute window."""


class Scheduler:
    """Decides which message goes next and when; the actor calls :meth:`next` in a loop.

    :meth:`next` returns a :class:`Dispatch` to send now, a time to come back at, or None
    (nothing to do until a message arrives or a request completes). Every dispatch must be
    answered with :meth:`complete`, then optionally :meth:`requeue` or :meth:`drop_chat`.
    """

    def __init__(
        self,
        *,
        global_rate: float = 30.0,
        private_interval: float = 1.0,
        group_per_minute: int = 20,
        in_flight: int = 8,
        aging_s: float = 10.0,
        private_margin: float = 0.05,
        group_margin: float = 0.5,
        global_margin: float = 0.002,
        aged_share: float = 0.1,
        one_way_share: float = 0.0,
        burst: float | None = None,
    ) -> None:
        if global_rate <= 0 or in_flight < 1 or group_per_minute < 1 or aging_s <= 0:
            raise ValueError("rates, in_flight, group_per_minute and aging_s must be positive")
        if not 0.0 <= one_way_share <= 0.5:
            raise ValueError("one_way_share must be within 0..0.5")
        self.one_way_share = one_way_share
        self.global_rate = global_rate
        self.capacity = max(1, math.floor(global_rate))
        self.private_gap = private_interval + private_margin
        self.group_per_minute = group_per_minute
        self.group_window = GROUP_WINDOW + group_margin
        self.global_window = GLOBAL_WINDOW + global_margin
        self.max_in_flight = in_flight
        self.aging_s = aging_s
        self._share_every = math.ceil(1.0 / aged_share) if aged_share > 0 else 0
        self._burst = burst if burst is not None else max(1.0, global_rate / 10.0)
        self._tokens = self._burst
        self._bucket_at: float | None = None
        self._window: list[float] = []
        self._rtt = SlidingMin(RTT_SAMPLES)
        self._chats: dict[int, _Chat] = {}
        self._hi: list[tuple[Rank, int, int]] = []
        self._lo: list[tuple[Rank, int, int]] = []
        self._timers: list[tuple[float, int, int]] = []
        self._idle: list[tuple[float, int]] = []
        self._depth = dict.fromkeys(Lane, 0)
        self._streak = 0
        self.in_flight = 0
        self.paused_until = 0.0

    # --- reading -------------------------------------------------------------------------

    @property
    def one_way(self) -> float:
        """Seconds each leg of a request is assumed to take at least (``h`` above)."""
        return self.one_way_share * self._rtt.value

    def depth(self) -> dict[Lane, int]:
        return dict(self._depth)

    @property
    def pending(self) -> int:
        return sum(self._depth.values())

    @property
    def chats(self) -> int:
        """Chats with state (pending messages or pacing still in force)."""
        return len(self._chats)

    def rank(self, p: Pending) -> Rank:
        if p.first:
            return (-1, p.enqueued, p.seq)
        if p.lane is Lane.INTERACTIVE:
            return (0, p.enqueued, p.seq)
        if p.lane is Lane.ALERT:
            return (1, p.enqueued, p.seq)
        return (1, p.enqueued + self.aging_s, p.seq)

    # --- writing -------------------------------------------------------------------------

    def add(self, p: Pending, now: float) -> None:
        chat = self._chat(p.outbound.chat_id)
        heapq.heappush(chat.heap, (self.rank(p), p))
        self._depth[p.lane] += 1
        if chat.heap[0][1] is p:
            self._schedule(chat, now)

    def pause(self, until: float) -> None:
        """Every lane waits until ``until`` (a 429's retry_after)."""
        self.paused_until = max(self.paused_until, until)

    def complete(self, d: Dispatch, now: float, rtt: float | None = None) -> None:
        """Book the end of a request, whatever its outcome (conservatively, as counted)."""
        self.in_flight -= 1
        if rtt is not None and rtt >= 0:
            self._rtt.add(rtt)
        slack = 2.0 * self.one_way
        heapq.heappush(self._window, now - slack + self.global_window)
        chat = self._chat(d.chat_id)
        chat.busy = False
        if chat.id < 0:
            releases = chat.releases
            bisect.insort(releases, now - slack + self.group_window)
            del releases[: bisect.bisect_right(releases, now)]
            if len(releases) >= self.group_per_minute:
                chat.ready_at = max(chat.ready_at, releases[-self.group_per_minute])
        else:
            chat.ready_at = max(chat.ready_at, now - slack + self.private_gap)
        self._schedule(chat, now)
        if not chat.heap:
            expiry = max(chat.ready_at, chat.releases[-1] if chat.releases else 0.0)
            heapq.heappush(self._idle, (expiry, chat.id))

    def requeue(
        self,
        items: list[Pending],
        now: float,
        *,
        first: bool = False,
        not_before: float | None = None,
        solo: bool = False,
    ) -> None:
        """Put messages back: ``first`` after a 429, ``not_before`` for a retry backoff."""
        touched: dict[int, _Chat] = {}
        for p in items:
            p.first = p.first or first
            p.solo = p.solo or solo
            chat = self._chat(p.outbound.chat_id)
            heapq.heappush(chat.heap, (self.rank(p), p))
            self._depth[p.lane] += 1
            touched[chat.id] = chat
        for chat in touched.values():
            if not_before is not None:
                chat.ready_at = max(chat.ready_at, not_before)
            self._schedule(chat, now)

    def drop_chat(self, chat_id: int) -> list[Pending]:
        """Remove and return every message waiting for this chat (it blocked the bot)."""
        chat = self._chats.get(chat_id)
        if chat is None:
            return []
        dropped = [p for _, p in chat.heap]
        chat.heap.clear()
        chat.version += 1
        for p in dropped:
            self._depth[p.lane] -= 1
        return dropped

    # --- deciding ------------------------------------------------------------------------

    def next(self, now: float) -> Dispatch | float | None:
        """The next dispatch, or when to ask again, or None to wait for an event."""
        if self._idle and self._idle[0][0] <= now:
            self._collect(now)
        if now < self.paused_until:
            return self.paused_until
        if self.in_flight >= self.max_in_flight:
            return None
        self._release_timers(now)
        hi = self._peek(self._hi)
        lo = self._peek(self._lo)
        if hi is None and lo is None:
            return self._next_timer()
        gate = self._gate(now)
        if gate is not True:
            return gate
        use_lo = hi is None
        if hi is not None and lo is not None and hi.heap[0][0][0] == 0 and self._share_every:
            if self._aged(lo, now):
                if self._streak >= self._share_every - 1:
                    use_lo = True
                else:
                    self._streak += 1
            else:
                self._streak = 0
        if use_lo:
            self._streak = 0
            assert lo is not None
            heapq.heappop(self._lo)
            chat = lo
        else:
            assert hi is not None
            heapq.heappop(self._hi)
            chat = hi
        return self._dispatch(chat, now)

    def _dispatch(self, chat: _Chat, now: float) -> Dispatch:
        _, head = heapq.heappop(chat.heap)
        self._depth[head.lane] -= 1
        items = [head]
        if head.coalescible and chat.heap:
            items = self._gather(chat, head)
        chat.busy = True
        chat.version += 1
        self.in_flight += 1
        self._tokens -= 1.0
        return Dispatch(chat.id, items, now)

    def _gather(self, chat: _Chat, head: Pending) -> list[Pending]:
        key = head.outbound.digest_key
        candidates = sorted(
            (p for _, p in chat.heap if p.coalescible and p.outbound.digest_key == key),
            key=lambda p: p.seq,
        )
        total = head.size
        taken: set[int] = set()
        for p in candidates:
            grown = total + len(DIGEST_SEPARATOR) + p.size
            if grown <= MAX_TEXT:
                total = grown
                taken.add(id(p))
        if not taken:
            return [head]
        chat.heap = [entry for entry in chat.heap if id(entry[1]) not in taken]
        heapq.heapify(chat.heap)
        items = [head] + [p for p in candidates if id(p) in taken]
        for p in items[1:]:
            self._depth[p.lane] -= 1
        items.sort(key=lambda p: p.seq)
        return items

    def _aged(self, chat: _Chat, now: float) -> bool:
        return now - chat.heap[0][1].enqueued >= self.aging_s

    def _gate(self, now: float) -> bool | float | None:
        """True when the global limit lets one more request go now."""
        window = self._window
        while window and window[0] <= now:
            heapq.heappop(window)
        if len(window) + self.in_flight >= self.capacity:
            return window[0] if window else None
        if self._bucket_at is not None:
            self._tokens = min(
                self._burst, self._tokens + (now - self._bucket_at) * self.global_rate
            )
        self._bucket_at = now
        if self._tokens < 1.0 - 1e-9:
            return now + max(1e-6, (1.0 - self._tokens) / self.global_rate)
        return True

    # --- chat bookkeeping ----------------------------------------------------------------

    def _chat(self, chat_id: int) -> _Chat:
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = _Chat(chat_id)
        return chat

    def _schedule(self, chat: _Chat, now: float) -> None:
        chat.version += 1
        if chat.busy or not chat.heap:
            return
        if chat.ready_at > now:
            heapq.heappush(self._timers, (chat.ready_at, chat.id, chat.version))
            return
        rank = chat.heap[0][0]
        heapq.heappush(self._hi if rank[0] <= 0 else self._lo, (rank, chat.id, chat.version))

    def _valid(self, chat_id: int, version: int) -> _Chat | None:
        chat = self._chats.get(chat_id)
        if chat is None or chat.version != version or chat.busy or not chat.heap:
            return None
        return chat

    def _peek(self, heap: list[tuple[Rank, int, int]]) -> _Chat | None:
        while heap:
            _, chat_id, version = heap[0]
            chat = self._valid(chat_id, version)
            if chat is not None:
                return chat
            heapq.heappop(heap)
        return None

    def _release_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, chat_id, version = heapq.heappop(timers)
            chat = self._valid(chat_id, version)
            if chat is not None:
                rank = chat.heap[0][0]
                heapq.heappush(self._hi if rank[0] <= 0 else self._lo, (rank, chat_id, version))

    def _next_timer(self) -> float | None:
        timers = self._timers
        while timers and self._valid(timers[0][1], timers[0][2]) is None:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def _collect(self, now: float) -> None:
        """Forget chats that have nothing queued and whose pacing no longer matters."""
        idle = self._idle
        while idle and idle[0][0] <= now:
            _, chat_id = heapq.heappop(idle)
            chat = self._chats.get(chat_id)
            if (
                chat is not None
                and not chat.heap
                and not chat.busy
                and chat.ready_at <= now
                and (not chat.releases or chat.releases[-1] <= now)
            ):
                del self._chats[chat_id]


async def wait_event(event: anyio.Event, clock: Clock, deadline: float | None) -> None:
    """Wait until ``event`` is set or ``clock`` reaches ``deadline`` (None: no deadline)."""
    if event.is_set():
        await anyio.lowlevel.checkpoint()
        return
    if deadline is None:
        await event.wait()
        return
    delay = deadline - clock.monotonic()
    if delay <= 0:
        await anyio.lowlevel.checkpoint()
        return

    async with anyio.create_task_group() as tg:

        async def timer() -> None:
            await clock.sleep(delay)
            tg.cancel_scope.cancel()

        tg.start_soon(timer)
        await event.wait()
        tg.cancel_scope.cancel()
