"""Channel statistics (``channel-stats``): win rate, average and median gain per channel.

Inputs: the calls history in PostgreSQL (``calls_history``) and the prices that followed.
The router tells `CallsSeen` for every channel newly seen on a token; the actor writes
those rows (``ON CONFLICT DO NOTHING``: the ingest outbox may write the same calls) and
follows the token for 7 days. Ingest tells it `PriceUpdate`s (coalesced per token in the
mailbox); for a followed token the highest FDV is kept and written in batches as
``peak_fdv`` / ``peak_at`` (raised only, so replays are harmless). Peaks are followed
for 7 days after a call, so a call whose peak reached 2x won within the window, and the
peak's time stands for the time it got there.

Every ``stats_refresh_s`` (clock-driven) the statistics are recomputed from the window
of history (in a worker thread: it is a loop over every call), stored in Redis (read
back at start, so the filters have numbers before the first refresh) and pushed to the
router (``filters``). Leaderboards are answered from a `cachetools.TTLCache`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.to_thread
import msgspec
import structlog
from cachetools import TTLCache

from actors.channel_stats_logic import WIN_MULTIPLE, CallOutcome, compute_channel_stats, leaderboard
from actors.store.handle import StoreHandle
from actors.user_store import STORE_ERRORS, to_ts, to_wall
from messages.filters import ChannelStats
from messages.settings import FilterSettingsSection
from messages.users import (
    CallSeen,
    CallsSeen,
    LeaderboardEntry,
    LeaderboardRequest,
    LeaderboardView,
    StatsSnapshot,
    StatsWanted,
)
from messages.wire import PriceUpdate, TokenEvent
from runtime import Actor, MailboxSpec, NameNotFound, Overflow, Ref

__all__ = ["FOLLOW_FOR", "SNAPSHOT_KEY", "ChannelStatsActor"]

log = structlog.get_logger(__name__)

SNAPSHOT_KEY: Final = "cw:channel-stats"
SNAPSHOT_TTL: Final = 2 * 86400
FOLLOW_FOR: Final = 7 * 86400.0
MAX_BUFFERED_CALLS: Final = 100_000
LEADERBOARD_MAX: Final = 50


class _Cached(msgspec.Struct, frozen=True):
    snapshot: StatsSnapshot
    usernames: dict[int, str]


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(_Cached)


class _Tick(msgspec.Struct, frozen=True):
    what: str


REFRESH: Final = _Tick("refresh")
FLUSH: Final = _Tick("flush")


def _mailbox_key(message: object) -> object:
    if isinstance(message, PriceUpdate):
        return ("price", message.token_key)
    return None


_INSERT_CALLS: Final = """
INSERT INTO calls_history
    (dedup_key, event_id, channel_id, channel_username, token_key, chain, symbol,
     called_at, fdv_at_call)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::timestamptz[], $9::float8[])
ON CONFLICT DO NOTHING
"""
_RAISE_PEAKS: Final = """
UPDATE calls_history AS c SET peak_fdv = u.fdv::numeric, peak_at = u.at
FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) AS u(token_key, fdv, at)
WHERE c.token_key = u.token_key
  AND c.called_at <= u.at AND c.called_at >= u.at - interval '7 days'
  AND (c.peak_fdv IS NULL OR c.peak_fdv < u.fdv::numeric)
"""
_HISTORY: Final = """
SELECT channel_id, channel_username, called_at, fdv_at_call::float8 AS fdv_at_call,
       peak_fdv::float8 AS peak_fdv, peak_at
FROM calls_history WHERE called_at >= $1 AND called_at <= $2
"""
_FOLLOWED: Final = """
SELECT token_key, max(called_at) AS last FROM calls_history
WHERE called_at >= $1 GROUP BY token_key
"""


def _outcomes(rows: Sequence[Any]) -> tuple[list[CallOutcome], dict[int, str]]:
    calls: list[CallOutcome] = []
    names: dict[int, str] = {}
    for row in rows:
        try:
            channel_id = int(row["channel_id"])
        except ValueError:
            continue
        called_at = to_ts(row["called_at"])
        fdv_at_call = row["fdv_at_call"]
        peak = row["peak_fdv"]
        peak_at = row["peak_at"]
        hit = (
            to_ts(peak_at)
            if peak is not None and peak_at is not None and peak >= WIN_MULTIPLE * fdv_at_call
            else None
        )
        calls.append(CallOutcome(channel_id, called_at, fdv_at_call, peak, hit))
        if row["channel_username"]:
            names[channel_id] = row["channel_username"]
    return calls, names


def _compute(
    rows: Sequence[Any], now: float, window: float, min_sample: int
) -> tuple[dict[int, ChannelStats], dict[int, str]]:
    calls, names = _outcomes(rows)
    return compute_channel_stats(calls, now, window, min_sample), names


class ChannelStatsActor(Actor):
    """Registered as ``channel-stats``; see the module docs."""

    mailbox = MailboxSpec(capacity=50_000, overflow=Overflow.COALESCE, key=_mailbox_key)

    def __init__(
        self,
        store: StoreHandle,
        config: FilterSettingsSection | None = None,
        *,
        push_to: str = "filters",
        flush_s: float = 10.0,
        record_calls: bool = True,
    ) -> None:
        self.store = store
        self.config = config or FilterSettingsSection()
        self.window = self.config.stats_window_days * 86400.0
        self.push_to = push_to
        self.flush_s = flush_s
        self.record_calls = record_calls
        self.snapshot: StatsSnapshot | None = None
        self.stats: dict[int, ChannelStats] = {}
        self.usernames: dict[int, str] = {}
        self.followed: dict[str, float] = {}
        self.peaks: dict[str, tuple[float, float]] = {}
        self.calls: list[tuple[str, CallsSeen, CallSeen]] = []
        self.refreshes = 0
        self.cache: TTLCache[Any, Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def started(self) -> None:
        self.cache = TTLCache(
            maxsize=64, ttl=self.config.stats_refresh_s, timer=self.ctx.clock.monotonic
        )
        try:
            raw = await self.store.redis().get(SNAPSHOT_KEY)
            if raw:
                cached = _DECODER.decode(raw)
                self._adopt(cached.snapshot, dict(cached.usernames))
                self._push()
        except (msgspec.DecodeError, *STORE_ERRORS) as exc:
            log.warning("channel_stats_cache_unreadable", error=repr(exc)[:200])
        try:
            since = to_wall(self.ctx.clock.wall() - FOLLOW_FOR)
            rows = await self.store.pool().fetch(_FOLLOWED, since)
            self.followed = {r["token_key"]: to_ts(r["last"]) for r in rows}
        except STORE_ERRORS as exc:
            log.warning("channel_stats_followed_unavailable", error=repr(exc)[:200])

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._every, self.config.stats_refresh_s, REFRESH)
            tg.start_soon(self._every, self.flush_s, FLUSH)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def _every(self, period: float, tick: _Tick) -> None:
        if tick is FLUSH:
            await self.ctx.clock.sleep(period)
        while True:
            self.ctx.ref.tell_nowait(tick)
            await self.ctx.clock.sleep(period)

    async def stopped(self) -> None:
        with anyio.move_on_after(2.0):
            await self._flush()

    # -- messages ------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if isinstance(message, PriceUpdate):
            self._price(message.token_key, message.fdv, message.emitted_at)
        elif isinstance(message, CallsSeen):
            self._calls(message)
        elif isinstance(message, TokenEvent):
            self._calls(_calls_of(message))
        elif message is FLUSH:
            await self._flush()
        elif message is REFRESH:
            await self.refresh()
        elif isinstance(message, StatsWanted):
            if self.snapshot is not None and isinstance(message.reply_to, Ref):
                message.reply_to.tell_nowait(self.snapshot)
        elif isinstance(message, LeaderboardRequest):
            return self._leaderboard(message.limit)
        else:
            log.warning("channel_stats_unexpected", message=type(message).__name__)
        return None

    def _price(self, token: str, fdv: float, at: float) -> None:
        if token not in self.followed:
            return
        best = self.peaks.get(token)
        if best is None or fdv > best[0]:
            self.peaks[token] = (fdv, at)

    def _calls(self, seen: CallsSeen) -> None:
        last = self.followed.get(seen.token_key, 0.0)
        for call in seen.calls:
            last = max(last, call.called_at)
            if self.record_calls and len(self.calls) < MAX_BUFFERED_CALLS:
                self.calls.append((f"call:{call.channel_id}:{seen.token_key}", seen, call))
            if call.username:
                self.usernames.setdefault(call.channel_id, call.username)
        self.followed[seen.token_key] = last

    async def _flush(self) -> bool:
        """Write buffered calls, then raised peaks (calls first: a peak needs its row)."""
        calls, peaks = self.calls, self.peaks
        if not calls and not peaks:
            return True
        self.calls, self.peaks = [], {}
        try:
            pool = self.store.pool()
            if calls:
                await pool.execute(
                    _INSERT_CALLS,
                    [key for key, _, _ in calls],
                    [seen.event_id for _, seen, _ in calls],
                    [str(call.channel_id) for _, _, call in calls],
                    [call.username[:64] or None for _, _, call in calls],
                    [seen.token_key for _, seen, _ in calls],
                    [seen.chain for _, seen, _ in calls],
                    [seen.symbol[:64] for _, seen, _ in calls],
                    [to_wall(call.called_at) for _, _, call in calls],
                    [call.fdv_at_call for _, _, call in calls],
                )
            if peaks:
                tokens = list(peaks)
                await pool.execute(
                    _RAISE_PEAKS,
                    tokens,
                    [peaks[t][0] for t in tokens],
                    [to_wall(peaks[t][1]) for t in tokens],
                )
        except STORE_ERRORS as exc:
            log.warning("channel_stats_flush_failed", error=repr(exc)[:200])
            self.calls = (calls + self.calls)[:MAX_BUFFERED_CALLS]
            for token, (fdv, at) in peaks.items():
                self._price(token, fdv, at)
            return False
        return True

    async def refresh(self) -> StatsSnapshot | None:
        """Recompute from PostgreSQL now; keep the previous numbers if the store is down."""
        await self._flush()
        now = self.ctx.clock.wall()
        try:
            rows = await self.store.pool().fetch(_HISTORY, to_wall(now - self.window), to_wall(now))
        except STORE_ERRORS as exc:
            log.warning("channel_stats_refresh_failed", error=repr(exc)[:200])
            return None
        stats, names = await anyio.to_thread.run_sync(
            _compute, rows, now, self.window, self.config.stats_min_sample
        )
        snapshot = StatsSnapshot(
            version=int(now * 1000), computed_at=now, stats=tuple(stats.values())
        )
        self._adopt(snapshot, {**self.usernames, **names})
        self.refreshes += 1
        cutoff = now - FOLLOW_FOR
        self.followed = {t: last for t, last in self.followed.items() if last >= cutoff}
        self._push()
        try:
            payload = _ENCODER.encode(_Cached(snapshot, self.usernames))
            await self.store.redis().set(SNAPSHOT_KEY, payload, ex=SNAPSHOT_TTL)
        except STORE_ERRORS as exc:
            log.warning("channel_stats_cache_write_failed", error=repr(exc)[:200])
        log.info(
            "channel_stats_refreshed",
            channels=len(stats),
            rated=sum(1 for s in stats.values() if s.rated),
            calls=len(rows),
        )
        return snapshot

    def _adopt(self, snapshot: StatsSnapshot, usernames: dict[int, str]) -> None:
        if self.snapshot is not None and snapshot.version < self.snapshot.version:
            return
        self.snapshot = snapshot
        self.stats = {s.channel_id: s for s in snapshot.stats}
        self.usernames = usernames
        if self.cache is not None:
            self.cache.clear()

    def _push(self) -> None:
        if self.snapshot is None:
            return
        with contextlib.suppress(NameNotFound):
            self.ctx.lookup(self.push_to).tell_nowait(self.snapshot)

    def _leaderboard(self, limit: int) -> LeaderboardView:
        limit = max(1, min(LEADERBOARD_MAX, limit))
        cache = self.cache
        if cache is not None:
            hit = cache.get(limit)
            if hit is not None:
                return hit  # type: ignore[no-any-return]
        entries = tuple(
            LeaderboardEntry(
                rank=rank,
                channel_id=s.channel_id,
                username=self.usernames.get(s.channel_id, ""),
                calls=s.calls,
                resolved=s.resolved,
                win_rate=s.win_rate,
                avg_gain=s.avg_gain,
                median_gain=s.median_gain,
            )
            for rank, s in enumerate(leaderboard(self.stats, limit), start=1)
        )
        view = LeaderboardView(
            entries=entries,
            computed_at=self.snapshot.computed_at if self.snapshot else None,
            window_days=self.config.stats_window_days,
        )
        if cache is not None:
            cache[limit] = view
        return view


def _calls_of(event: TokenEvent) -> CallsSeen:
    return CallsSeen(
        event_id=event.event_id,
        token_key=event.token_key,
        chain=event.chain_id,
        symbol=event.symbol,
        calls=tuple(
            CallSeen(
                channel_id=c.channel_id,
                username=c.username,
                called_at=c.called_at,
                fdv_at_call=c.fdv_at_call,
            )
            for c in event.calls
        ),
    )
