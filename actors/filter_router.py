"""The filter router (``filters``): where token events enter the users flow.

Ingest tells every `TokenEvent` here. The router

1. applies the **re-check rule**: it remembers, per token, the channels already checked
   (for ``rejected_ttl_s``, one hour, counted from the last check). A repeat event that
   brings no new channel costs a dict lookup and goes no further; one with new channels
   is evaluated again for every user (users who were already notified are stopped by
   the notify gate, so a rejected token can be upgraded to accepted, never the reverse);
2. hands the events that queued up since its last round to the shards as one batch,
   scored once for all of them (`FactsBatch`: statistics joined to the calls), so under
   load the shards decide many events per vector pass; at low rates a batch is one
   event. Backpressure: at ``max_batch`` waiting events the router stops taking more
   until the shards took the batch (whose mailboxes block in turn);
3. tells ``channel-stats`` the calls of channels new on a token.

The checked-channels memory is written behind to one Redis hash (field: token; value:
expiry and channels) at most every ``seen_flush_s`` (a Redis round trip per event cost
a tenth of the flow's CPU at 1,000 events/s), never awaited per event, and read back at
start, so a restart of the router or of the process keeps the one-hour rule. Losing the
last writes in a crash is harmless: those events are evaluated once more, and the gate
keeps users from hearing of a token twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import anyio
import anyio.lowlevel
import structlog

from actors.filter_batch import FactsBatch
from actors.filter_shard import shard_name
from actors.store.handle import StoreHandle
from actors.user_store import STORE_ERRORS
from messages.filters import ChannelStats
from messages.settings import FilterSettingsSection
from messages.users import CallSeen, CallsSeen, StatsSnapshot, StatsWanted
from messages.wire import TokenEvent
from runtime import Actor, MailboxSpec, NameNotFound, Ref

__all__ = [
    "COUNTS",
    "FLUSH",
    "SEEN_KEY",
    "FilterRouter",
    "RouterCounts",
    "decode_seen",
    "encode_seen",
]

log = structlog.get_logger(__name__)

SEEN_KEY: Final = "cw:filters:seen"
PRUNE_EVERY: Final = 1024


def encode_seen(expires_at: float, channels: frozenset[int]) -> str:
    return f"{expires_at!r} " + ",".join(str(c) for c in sorted(channels))


def decode_seen(raw: bytes | str) -> tuple[float, frozenset[int]] | None:
    """Parse a stored entry; None when it is damaged (it is then simply forgotten)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    head, _, tail = text.partition(" ")
    try:
        expires = float(head)
        channels = frozenset(int(c) for c in tail.split(",") if c)
    except ValueError:
        return None
    return expires, channels


class RouterCounts(NamedTuple):
    events: int
    routed: int
    repeats_skipped: int
    tracked_tokens: int
    stats_version: int


class _CountsAsk:
    pass


FLUSH: Final = object()
"""Ask the router to write its checked-channels memory now (tests, shutdown hooks)."""
COUNTS: Final = _CountsAsk()


class FilterRouter(Actor):
    """Registered as ``filters``."""

    mailbox = MailboxSpec(capacity=20_000)

    def __init__(
        self,
        store: StoreHandle,
        config: FilterSettingsSection | None = None,
        *,
        stats_source: str = "channel-stats",
        record_calls: bool = True,
        max_batch: int = 16,
        seen_flush_s: float = 0.25,
    ) -> None:
        self.store = store
        self.config = config or FilterSettingsSection()
        self.ttl = self.config.rejected_ttl_s
        self.stats_source = stats_source
        self.record_calls = record_calls
        self.stats: Mapping[int, ChannelStats] = {}
        self.stats_version = 0
        self._lines: dict[tuple[int, str], str] = {}
        self._seen: dict[str, str] = {}
        """token -> its `encode_seen` text, oldest expiry first. Text rather than a tuple
        with a set: an hour of tokens is millions of entries at the feed's peak, and
        strings are nothing the cyclic garbage collector has to walk."""
        self._dirty: dict[str, str] = {}
        self._deleted: set[str] = set()
        self._shards: list[Ref] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._flushing = False
        self.max_batch = max_batch
        self.seen_flush_s = seen_flush_s
        self._pending: list[tuple[TokenEvent, frozenset[int]]] = []
        self._wake = anyio.Event()
        self._space: anyio.Event | None = None
        self._sending = False
        self._sent: anyio.Event | None = None
        self.events = 0
        self.routed = 0
        self.repeats = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def started(self) -> None:
        await self._load_seen()
        try:
            self.ctx.lookup(self.stats_source).tell_nowait(StatsWanted(self.ctx.ref))
        except NameNotFound:
            log.warning("filter_router_no_stats_source", name=self.stats_source)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._dispatcher)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()
        self._tg = None

    async def stopped(self) -> None:
        if self._pending and not self._sending:
            pending, self._pending = self._pending, []
            with anyio.move_on_after(2.0):
                await self._send(pending)
        if self._dirty or self._deleted:
            with anyio.move_on_after(2.0):
                await self._flush_once()

    async def _load_seen(self) -> None:
        try:
            raw = await self.store.redis().hgetall(SEEN_KEY)
        except STORE_ERRORS as exc:
            log.warning("filter_router_seen_unavailable", error=repr(exc)[:200])
            return
        now = self.ctx.clock.wall()
        entries: list[tuple[float, str, str]] = []
        for key, value in raw.items():
            token = key.decode() if isinstance(key, bytes) else str(key)
            parsed = decode_seen(value)
            if parsed is None or parsed[0] <= now:
                self._deleted.add(token)
                continue
            entries.append((parsed[0], token, encode_seen(*parsed)))
        entries.sort()
        self._seen = {token: text for _, token, text in entries}
        if entries:
            log.info("filter_router_seen_loaded", tokens=len(entries))

    # -- messages ------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if isinstance(message, TokenEvent):
            await self._route(message)
        elif isinstance(message, StatsSnapshot):
            if message.version >= self.stats_version:
                self.stats = {s.channel_id: s for s in message.stats}
                self.stats_version = message.version
                self._lines = {}
        elif message is COUNTS:
            await self._idle()
            return RouterCounts(
                self.events, self.routed, self.repeats, len(self._seen), self.stats_version
            )
        elif message is FLUSH:
            await self._idle()
            await self._flush_once()
        else:
            log.warning("filter_router_unexpected", message=type(message).__name__)
        return None

    def _accept(self, event: TokenEvent) -> frozenset[int] | None:
        """Apply the re-check rule: the channels to check anew, None for a plain repeat."""
        now = self.ctx.clock.wall()
        token = event.token_key
        channels = frozenset(call.channel_id for call in event.calls)
        text = self._seen.get(token)
        known = decode_seen(text) if text is not None else None
        if known is not None and known[0] > now:
            new = channels - known[1]
            if not new:
                self.repeats += 1
                return None
            checked = known[1] | channels
        else:
            new = checked = channels
        if self.stats_version:
            # Remember only what was checked against real statistics: events routed before
            # the first snapshot are checked again once the numbers are in.
            expires = now + self.ttl
            self._seen.pop(token, None)
            self._seen[token] = self._dirty[token] = encode_seen(expires, checked)
            self._deleted.discard(token)
            self._schedule_flush()
        if self.events % PRUNE_EVERY == 0:
            self._prune(now)
        return new

    async def _route(self, event: TokenEvent) -> None:
        self.events += 1
        new = self._accept(event)
        if new is None:
            return
        self._pending.append((event, new))
        self._wake.set()
        if len(self._pending) >= self.max_batch:
            space = self._space = anyio.Event()
            await space.wait()

    async def _dispatcher(self) -> None:
        """Hand what queued up since the last round to the shards, as one batch."""
        while True:
            if not self._pending:
                wake = self._wake = anyio.Event()
                await wake.wait()
                continue
            pending, self._pending = self._pending, []
            if self._space is not None:
                self._space.set()
                self._space = None
            self._sending = True
            try:
                await self._send(pending)
            finally:
                self._sending = False
                if self._sent is not None:
                    self._sent.set()

    async def _send(self, pending: list[tuple[TokenEvent, frozenset[int]]]) -> None:
        if len(self._lines) > 50_000:
            self._lines = {}
        batch = FactsBatch(
            [event for event, _ in pending],
            self.stats,
            self.ctx.clock.wall(),
            self.ctx.clock.monotonic(),
            self._lines,
        )
        for shard in self._shard_refs():
            await shard.tell(batch)
        self.routed += len(pending)
        if self.record_calls:
            for event, new in pending:
                self._tell_calls(event, new)

    async def _idle(self) -> None:
        """Until every event received so far has been handed to the shards."""
        while self._pending or self._sending:
            await anyio.lowlevel.checkpoint()

    def _tell_calls(self, event: TokenEvent, new: frozenset[int]) -> None:
        latest: dict[int, CallSeen] = {}
        for call in event.calls:
            if call.channel_id in new:
                seen = latest.get(call.channel_id)
                if seen is None or call.called_at > seen.called_at:
                    latest[call.channel_id] = CallSeen(
                        channel_id=call.channel_id,
                        username=call.username,
                        called_at=call.called_at,
                        fdv_at_call=call.fdv_at_call,
                    )
        if not latest:
            return
        try:
            target = self.ctx.lookup(self.stats_source)
        except NameNotFound:
            return
        target.tell_nowait(
            CallsSeen(
                event_id=event.event_id,
                token_key=event.token_key,
                chain=event.chain_id,
                symbol=event.symbol,
                calls=tuple(latest.values()),
            )
        )

    def _shard_refs(self) -> list[Ref]:
        if len(self._shards) != self.config.shards or not all(r.alive for r in self._shards):
            refs: list[Ref] = []
            for index in range(self.config.shards):
                try:
                    refs.append(self.ctx.lookup(shard_name(index)))
                except NameNotFound:
                    log.error("filter_router_shard_missing", shard=index)
            self._shards = refs
        return self._shards

    def _prune(self, now: float) -> None:
        """Forget expired tokens (entries are kept in expiry order: oldest first)."""
        expired: list[str] = []
        for token, text in self._seen.items():
            if float(text.partition(" ")[0]) > now:
                break
            expired.append(token)
        for token in expired:
            del self._seen[token]
            self._dirty.pop(token, None)
            self._deleted.add(token)
        if expired:
            self._schedule_flush()

    # -- write-behind --------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flushing and self._tg is not None:
            self._flushing = True
            self._tg.start_soon(self._flush_loop)

    async def _flush_loop(self) -> None:
        try:
            while self._dirty or self._deleted:
                await self.ctx.clock.sleep(self.seen_flush_s)
                if not await self._flush_once():
                    await self.ctx.clock.sleep(1.0)
        finally:
            self._flushing = False

    async def _flush_once(self) -> bool:
        dirty, self._dirty = self._dirty, {}
        deleted, self._deleted = self._deleted, set()
        if not dirty and not deleted:
            return True
        try:
            pipe = self.store.redis().pipeline(transaction=False)
            if dirty:
                pipe.hset(SEEN_KEY, mapping=dirty)  # type: ignore[arg-type]
            if deleted:
                pipe.hdel(SEEN_KEY, *deleted)
            pipe.expire(SEEN_KEY, int(self.ttl) + 60)
            await pipe.execute()
        except STORE_ERRORS as exc:
            for token, value in dirty.items():
                self._dirty.setdefault(token, value)
            self._deleted |= deleted - self._dirty.keys()
            log.warning("filter_router_flush_failed", error=repr(exc)[:200])
            return False
        return True
