"""The multiplier-index actor: tells users when a token they were notified of multiplies.

It owns a :class:`MultiplierIndex` (token -> users, FDV at notify, highest threshold sent)
and feeds it every price update. The mailbox coalesces price updates by token, so a flood
keeps only the newest price of each token; ``Track`` / ``Untrack`` never coalesce.

Persistence is write-behind but safe. Each token is one Redis value under
``mult:<token_key>`` (the index's blob behind the token's symbol, see `pack_value`),
expiring 7 days after the token's newest entry. A flusher task writes the changed tokens
in pipelined batches and hands an alert to the sender only after the value recording its
threshold is in Redis: a crash before the write loses that state, and the rebuilt index
raises the alert again at the next price; a crash after it never sends it twice (at most
once, not at least once: an alert persisted but not yet handed over when the process dies
is lost). While a write is in flight, new changes pile up for the next one, so under load
one round trip carries many changes. A ``Track`` is persisted the same way, so one
acknowledged just before a crash may be lost with it.

At start the whole index is rebuilt from Redis (SCAN + MGET in chunks). Redis being down
is a crash (``StoreUnavailable`` or a redis ``ConnectionError``): the supervisor's backoff
restart is the retry, there is no reconnect loop here.
"""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol, cast

import anyio
import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Gauge

from actors.alert_texts import multiplier_alert
from actors.multiplier_index import DEFAULT_THRESHOLDS, Alert, MultiplierIndex
from actors.store.handle import StoreHandle, StoreUnavailable
from actors.store.outbox import HistoryRejected, append_history_many
from messages.delivery import Lane, Outbound
from messages.tracking import Track, TrackedBy, TrackMany, Untrack
from messages.wire import PriceUpdate
from runtime import Actor, MailboxSpec, NameNotFound, Overflow, Ref

__all__ = [
    "KEY_PREFIX",
    "MultiplierStore",
    "Multipliers",
    "RedisMultiplierStore",
    "StoredToken",
    "TokenWrite",
    "TrackedToken",
    "pack_value",
    "price_key",
    "unpack_value",
]

KEY_PREFIX: Final = "mult:"
DAY: Final = 86_400.0
_KEY_MAX: Final = 256
_SYMBOL_MAX: Final = 64

ALERTS = Counter("callwatch_multiplier_alerts", "Multiplier alerts handed to the sender")
UNDELIVERED = Counter(
    "callwatch_multiplier_alerts_undelivered", "Multiplier alerts with no sender to take them"
)
ENTRIES = Gauge("callwatch_multiplier_entries", "Tracked (token, user) entries")
REBUILD_SECONDS = Gauge("callwatch_multiplier_rebuild_seconds", "Duration of the last rebuild")


def price_key(message: object) -> str | None:
    """Mailbox coalescing key: price updates by token; everything else never coalesces."""
    return message.token_key if type(message) is PriceUpdate else None


class TrackedToken(NamedTuple):
    """One line of /tracked; ``highest_threshold`` is None until a first alert was sent."""

    token_key: str
    symbol: str
    fdv_at_notify: float
    highest_threshold: float | None
    notified_at: float = 0.0


class StoredToken(NamedTuple):
    """A token as read back from the store."""

    token_key: str
    blob: bytes | memoryview
    symbol: str


class TokenWrite(NamedTuple):
    """A token's new stored state; an empty blob deletes it."""

    token_key: str
    blob: bytes
    symbol: str
    ttl_s: float


class MultiplierStore(Protocol):
    """Where the index lives between runs (Redis in production)."""

    def scan(self, count: int) -> AsyncIterator[list[StoredToken]]:
        """Every stored token, in chunks of about ``count``; may repeat a token."""
        ...

    async def write(self, writes: Sequence[TokenWrite]) -> None:
        """Apply the writes; return only once the store has acknowledged all of them."""
        ...


class RedisMultiplierStore:
    """One value per token: ``mult:<token_key>`` -> the symbol and the index's blob.

    The value is ``pack_value(blob, symbol)``; its TTL runs to 7 days after the token's
    newest entry. Keeping the symbol inside the value (not in a key of its own) halves the
    keys to SCAN, the values to parse at a rebuild and the commands of every write.

    The client comes from the store handle on every call, so a restarted Redis owner's
    new client is picked up, and a missing one raises ``StoreUnavailable``. The client
    must return bytes (``decode_responses=False``, redis-py's default).
    """

    def __init__(self, handle: StoreHandle, *, write_chunk: int = 1_000) -> None:
        self._handle = handle
        self._write_chunk = max(1, write_chunk)

    async def scan(self, count: int) -> AsyncIterator[list[StoredToken]]:
        """SCAN and MGET share a round trip: each MGET rides with the next SCAN."""
        client = self._handle.redis()
        head = KEY_PREFIX.encode()
        pattern = head + b"*"
        cursor, keys = await client.scan(cursor=0, match=pattern, count=count)
        while True:
            done = int(cursor) == 0
            pipe = client.pipeline(transaction=False)
            if keys:
                pipe.mget(keys)
            if not done:
                pipe.scan(cursor=cursor, match=pattern, count=count)
            replies = await pipe.execute() if keys or not done else []
            values = replies[0] if keys else []
            chunk: list[StoredToken] = []
            for key, value in zip(keys, values, strict=True):
                if value is None:
                    continue  # expired since the SCAN saw it
                raw = key if isinstance(key, bytes) else str(key).encode()
                try:
                    token_key = sys.intern(raw[len(head) :].decode())
                except UnicodeDecodeError:
                    continue
                blob, symbol = unpack_value(value)
                chunk.append(StoredToken(token_key, blob, symbol))
            if chunk:
                yield chunk
            if done:
                return
            cursor, keys = replies[-1]

    async def write(self, writes: Sequence[TokenWrite]) -> None:
        client = self._handle.redis()
        step = self._write_chunk
        for start in range(0, len(writes), step):
            pipe = client.pipeline(transaction=False)
            for w in writes[start : start + step]:
                key = KEY_PREFIX + w.token_key
                if w.blob and w.ttl_s > 0:
                    pipe.set(key, pack_value(w.blob, w.symbol), px=max(1, int(w.ttl_s * 1000)))
                else:
                    pipe.delete(key)
            await pipe.execute()


_VALUE_TAG: Final = 1


def pack_value(blob: bytes, symbol: str) -> bytes:
    """A stored value: tag byte, symbol length (u8), symbol (UTF-8), the index's blob."""
    raw = symbol.encode("utf-8", "ignore")[:255]
    return bytes((_VALUE_TAG, len(raw))) + raw + blob


def unpack_value(value: bytes) -> tuple[memoryview, str]:
    """(blob, symbol) of a stored value; a bare index blob (no tag) has no symbol."""
    view = memoryview(value)
    if len(view) >= 2 and view[0] == _VALUE_TAG:
        end = 2 + view[1]
        return view[end:], bytes(view[2:end]).decode("utf-8", "ignore")
    return view, ""


class _UserTokens:
    """user -> token keys, for /tracked, at 12 bytes a pair.

    Two flat columns (user, token ordinal), unsorted: /tracked is rare and one scan of
    2.5M users takes a few milliseconds, while sorting them would add a second to every
    rebuild (and a dict of sets would take seven times the memory). Recent additions sit
    in a small dict until :meth:`compact` merges them. Removals are lazy: readers check
    each key against the index, and compaction drops tokens no longer tracked at all.
    """

    __slots__ = ("_delta", "_delta_size", "_names", "_ordinal", "_ords", "_users")

    def __init__(self) -> None:
        self._users: npt.NDArray[np.int64] = np.empty(0, np.int64)
        self._ords: npt.NDArray[np.int32] = np.empty(0, np.int32)
        self._names: list[str] = []
        self._ordinal: dict[str, int] = {}
        self._delta: dict[int, list[int]] = {}
        self._delta_size = 0

    @property
    def pairs(self) -> int:
        return int(self._users.shape[0]) + self._delta_size

    @property
    def pending(self) -> int:
        return self._delta_size

    def load(self, users: npt.NDArray[np.int64], ords: npt.NDArray[Any], names: list[str]) -> None:
        """Replace everything: pair i is (users[i], names[ords[i]])."""
        self._users = users
        self._ords = ords.astype(np.int32)
        self._names = names
        self._ordinal = {name: i for i, name in enumerate(names)}
        self._delta = {}
        self._delta_size = 0

    def add(self, user_id: int, token_key: str) -> None:
        ordinal = self._ordinal.get(token_key)
        if ordinal is None:
            ordinal = self._ordinal[token_key] = len(self._names)
            self._names.append(token_key)
        self._delta.setdefault(user_id, []).append(ordinal)
        self._delta_size += 1

    def keys_of(self, user_id: int) -> list[str]:
        ords: list[int] = self._ords[self._users == user_id].tolist()
        ords += self._delta.get(user_id, ())
        names = self._names
        return list(dict.fromkeys(names[o] for o in ords))

    def compact(self, alive: Callable[[str], bool]) -> int:
        """Merge recent additions and drop tokens ``alive`` rejects; the pairs dropped."""
        size = self._delta_size
        delta_users = np.fromiter(
            (u for u, ords in self._delta.items() for _ in ords), np.int64, count=size
        )
        delta_ords = np.fromiter(
            (o for ords in self._delta.values() for o in ords), np.int32, count=size
        )
        users = np.concatenate([self._users, delta_users])
        ords = np.concatenate([self._ords, delta_ords])
        live = np.fromiter(map(alive, self._names), np.bool_, count=len(self._names))
        keep = live[ords]
        renumber = np.cumsum(live, dtype=np.int64) - 1
        names = [name for name, ok in zip(self._names, live.tolist(), strict=True) if ok]
        self.load(users[keep], renumber[ords[keep]], names)
        return int(keep.shape[0] - np.count_nonzero(keep))


_ENCODE_CHUNK: Final = 1_000
"""Tokens encoded per store write: bounds the memory a large flush holds at once."""
_USER_ONLY: Final = np.dtype([("user", "<i8"), ("rest", "V17")])
_RECORD_SIZE: Final = 25


def _users_of(blobs: Sequence[bytes | memoryview]) -> tuple[npt.NDArray[np.int64], list[int]]:
    """The user ids in stored blobs, in one pass, and how many each blob holds.

    Layout (see actors.multiplier_index): 4-byte magic, threshold count (u8), thresholds
    (f8 each), entry count (u32), then 25-byte records that start with the user (<i8).
    A blob that does not fit the layout counts as holding no users.
    """
    parts: list[memoryview] = []
    counts: list[int] = []
    for blob in blobs:
        view = memoryview(blob)
        size = len(view)
        offset = 9 + 8 * view[4] if size >= 5 else size + 1
        n = int.from_bytes(view[offset - 4 : offset], "little") if offset <= size else -1
        if n < 0 or size != offset + n * _RECORD_SIZE:
            counts.append(0)
            continue
        parts.append(view[offset:])
        counts.append(n)
    records = np.frombuffer(b"".join(parts), dtype=_USER_ONLY)
    return records["user"].astype(np.int64), counts


def _valid_token_key(key: object) -> bool:
    return (
        isinstance(key, str)
        and 3 <= len(key) <= _KEY_MAX
        and ":" in key[1:-1]
        and key.isprintable()
        and not any(ch.isspace() for ch in key)
    )


def _valid_user(user_id: object) -> bool:
    return type(user_id) is int and -(2**63) <= user_id < 2**63


def _clean_symbol(symbol: object) -> str:
    if not isinstance(symbol, str):
        return ""
    return "".join(ch for ch in symbol[: _SYMBOL_MAX * 2] if ch.isprintable())[:_SYMBOL_MAX]


class Multipliers(Actor):
    """token -> {user: (FDV at notify, highest threshold sent)}; one alert per crossing."""

    mailbox = MailboxSpec(capacity=50_000, overflow=Overflow.COALESCE, key=price_key)

    def __init__(
        self,
        store: StoreHandle | MultiplierStore,
        thresholds: Iterable[float] = DEFAULT_THRESHOLDS,
        *,
        entry_ttl_days: float = 7.0,
        expire_every_s: float = 3600.0,
        sender: str = "sender",
        scan_count: int = 2_000,
        write_chunk: int = 1_000,
        progress_every: int = 250_000,
    ) -> None:
        if not (entry_ttl_days > 0 and math.isfinite(entry_ttl_days)):
            raise ValueError("entry_ttl_days must be a positive number of days")
        if not expire_every_s > 0:
            raise ValueError("expire_every_s must be positive")
        self._history = store if isinstance(store, StoreHandle) else None
        self._store: MultiplierStore = (
            RedisMultiplierStore(store, write_chunk=write_chunk)
            if isinstance(store, StoreHandle)
            else store
        )
        self._index = MultiplierIndex(thresholds)
        self._max_age = entry_ttl_days * DAY
        self._expire_every = expire_every_s
        self._sender_name = sender
        self._sender: Ref | None = None
        self._scan_count = scan_count
        self._progress_every = progress_every
        self._symbols: dict[str, str] = {}
        self._by_user = _UserTokens()
        self._pending: list[tuple[Alert, float]] = []
        self._wakeup: anyio.Event | None = None
        self._closing = False
        self._compact_at = 50_000
        self.alerts_sent = 0
        self.alerts_undelivered = 0
        self.rejected = 0
        self.rebuild_s = 0.0

    @property
    def index(self) -> MultiplierIndex:
        """The index itself (read-only use: tests and benchmarks)."""
        return self._index

    # -- lifecycle -----------------------------------------------------------------------

    async def started(self) -> None:
        self._wakeup = anyio.Event()
        await self._rebuild()

    async def run(self) -> None:
        expiry = anyio.CancelScope()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._flush_loop)
            tg.start_soon(self._expire_loop, expiry)
            self._kick()
            await self.ctx.process(self)
            self._closing = True
            expiry.cancel()
            self._kick()

    # -- messages ------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if type(message) is PriceUpdate:
            alerts = self._index.on_price(message.token_key, message.fdv)
            if alerts:
                fdv = message.fdv
                self._pending.extend((alert, fdv) for alert in alerts)
                self._kick()
            return None
        if isinstance(message, Track):
            return self._track(message)
        if isinstance(message, TrackMany):
            return sum(self._track(item) for item in message.items if isinstance(item, Track))
        if isinstance(message, Untrack):
            return self._untrack(message)
        if isinstance(message, TrackedBy):
            return self._tracked_by(message.user_id)
        self.rejected += 1
        self.ctx.log.warning("multipliers.unknown_message", message_type=type(message).__name__)
        return None

    def _track(self, message: Track) -> bool:
        key = message.token_key
        if not _valid_token_key(key):
            self.rejected += 1
            self.ctx.log.warning("multipliers.track_rejected", reason="bad token key")
            return False
        key = sys.intern(key)
        user = message.user_id
        if not self._index.track(key, user, message.fdv_at_notify, self.ctx.clock.wall()):
            return False
        self._by_user.add(user, key)
        symbol = _clean_symbol(message.symbol)
        if symbol:
            self._symbols[key] = symbol
        self._kick()
        if self._by_user.pending >= self._compact_at:
            self._compact()
        return True

    def _untrack(self, message: Untrack) -> bool:
        key, user = message.token_key, message.user_id
        if not isinstance(key, str) or not _valid_user(user):
            self.rejected += 1
            return False
        if not self._index.untrack(key, user):
            return False
        if key not in self._index:
            self._symbols.pop(key, None)
        self._kick()
        return True

    def _tracked_by(self, user_id: int) -> list[TrackedToken]:
        if not _valid_user(user_id):
            return []
        thresholds = self._index.thresholds
        found: list[tuple[float, TrackedToken]] = []
        for key in self._by_user.keys_of(user_id):
            for entry in self._index.entries_for(key):
                if entry.user_id == user_id:
                    level = entry.highest_index
                    highest = thresholds[level] if level >= 0 else None
                    line = TrackedToken(
                        key,
                        self._symbols.get(key, ""),
                        entry.fdv_at_notify,
                        highest,
                        entry.notified_at,
                    )
                    found.append((entry.notified_at, line))
                    break
        found.sort(key=lambda pair: -pair[0])
        return [line for _, line in found]

    # -- persistence ---------------------------------------------------------------------

    def _kick(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _flush_loop(self) -> None:
        while not self._closing:
            assert self._wakeup is not None
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            await self._flush()
        await self._flush()

    async def _flush(self) -> None:
        """Write every changed token, then hand over the alerts those writes recorded.

        Alerts raised while this write is in flight belong to the next one: their tokens
        are dirty again and their alerts are in the fresh pending list.
        """
        index = self._index
        dirty = list(index.take_dirty())
        alerts, self._pending = self._pending, []
        if not dirty and not alerts:
            return
        step = _ENCODE_CHUNK
        for start in range(0, len(dirty), step):
            now = self.ctx.clock.wall()
            writes: list[TokenWrite] = []
            for key in dirty[start : start + step]:
                blob = index.encode_token(key)
                newest = index.newest_notified_at(key) if blob else None
                ttl = -1.0 if newest is None else newest + self._max_age - now
                if ttl > 0:
                    writes.append(TokenWrite(key, blob, self._symbols.get(key, ""), ttl))
                else:
                    writes.append(TokenWrite(key, b"", "", 0.0))
            await self._store.write(writes)
        ENTRIES.set(len(index))
        for alert, fdv_now in alerts:
            await self._deliver(alert, fdv_now)
        await self._record(alerts)

    async def _record(self, alerts: list[tuple[Alert, float]]) -> None:
        """History of alerts sent (reports and admin stats read it); best effort: the
        alert itself is already safe in Redis and on its way."""
        if self._history is None or not alerts:
            return
        at = datetime.fromtimestamp(self.ctx.clock.wall(), UTC)
        rows = [
            (
                "notifications",
                {
                    "dedup_key": f"mult:{a.token_key}:{a.user_id}:{a.threshold:g}",
                    "chat_id": a.user_id,
                    "token_key": a.token_key,
                    "kind": "multiplier",
                    "threshold": int(a.threshold),
                    "fdv": float(fdv_now),
                    "sent_at": at,
                },
            )
            for a, fdv_now in alerts
        ]
        try:
            await append_history_many(self._history, rows)
        except (StoreUnavailable, HistoryRejected) as exc:
            self.ctx.log.warning("multipliers.history_not_recorded", rows=len(rows), error=str(exc))

    async def _deliver(self, alert: Alert, fdv_now: float) -> None:
        key, user = alert.token_key, alert.user_id
        text = multiplier_alert(
            token_key=key,
            symbol=self._symbols.get(key, ""),
            threshold=alert.threshold,
            multiple=alert.multiple,
            fdv_then=alert.fdv_at_notify,
            fdv_now=float(fdv_now),
        )
        out = Outbound(
            chat_id=user,
            text=text,
            lane=Lane.ALERT,
            kind="multiplier",
            dedup_key=f"mult:{key}:{user}:{alert.threshold:g}",
            digest_key=f"alerts:{user}",
        )
        sender = self._sender
        if sender is None or not sender.alive:
            try:
                sender = self._sender = self.ctx.lookup(self._sender_name)
            except NameNotFound:
                self.alerts_undelivered += 1
                UNDELIVERED.inc()
                self.ctx.log.warning("multipliers.no_sender", name=self._sender_name)
                return
        await sender.tell(out)
        self.alerts_sent += 1
        ALERTS.inc()

    async def _rebuild(self) -> None:
        clock, log, index = self.ctx.clock, self.ctx.log, self._index
        began = clock.monotonic()
        tokens = entries = rejected = 0
        next_progress = self._progress_every
        user_parts: list[npt.NDArray[np.int64]] = []
        ord_parts: list[npt.NDArray[np.intp]] = []
        names: list[str] = []
        async for chunk in self._store.scan(self._scan_count):
            # load_tokens reads any buffer (it is annotated bytes): no copy of the blobs.
            items = cast(list[tuple[str, bytes]], [(i.token_key, i.blob) for i in chunk])
            report = index.load_tokens(items)
            tokens += report.tokens
            entries += report.entries
            if report.rejected:
                rejected += len(report.rejected)
                sample_key, reason = next(iter(report.rejected.items()))
                log.warning(
                    "multipliers.blobs_rejected",
                    count=len(report.rejected),
                    sample_token=sample_key,
                    reason=reason,
                )
            loaded = [
                item
                for item in chunk
                if item.token_key in index and item.token_key not in report.rejected
            ]
            users, counts = _users_of([item.blob for item in loaded])
            base = len(names)
            user_parts.append(users)
            ord_parts.append(np.repeat(np.arange(base, base + len(loaded)), counts))
            for i, item in enumerate(loaded):
                if item.symbol:
                    self._symbols[item.token_key] = item.symbol
                if counts[i] == 0:  # a layout _users_of does not know: ask the index
                    found = [e.user_id for e in index.entries_for(item.token_key)]
                    user_parts.append(np.asarray(found, np.int64))
                    ord_parts.append(np.full(len(found), base + i, np.intp))
            names.extend(item.token_key for item in loaded)
            if entries >= next_progress:
                log.info(
                    "multipliers.rebuild_progress",
                    entries=entries,
                    tokens=tokens,
                    elapsed_s=round(clock.monotonic() - began, 2),
                )
                next_progress = (entries // self._progress_every + 1) * self._progress_every
        self._by_user.load(
            np.concatenate(user_parts) if user_parts else np.empty(0, np.int64),
            np.concatenate(ord_parts) if ord_parts else np.empty(0, np.int32),
            names,
        )
        dropped = index.expire(clock.wall(), self._max_age)
        if dropped:
            self._forget_gone_tokens()
        self.rebuild_s = clock.monotonic() - began
        REBUILD_SECONDS.set(self.rebuild_s)
        ENTRIES.set(len(index))
        log.info(
            "multipliers.rebuilt",
            tokens=index.token_count(),
            entries=len(index),
            expired=dropped,
            rejected_blobs=rejected,
            seconds=round(self.rebuild_s, 3),
            incarnation=self.ctx.incarnation,
        )

    # -- expiry --------------------------------------------------------------------------

    async def _expire_loop(self, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await self.ctx.clock.sleep(self._expire_every)
                self._expire()

    def _expire(self) -> None:
        dropped = self._index.expire(self.ctx.clock.wall(), self._max_age)
        if dropped:
            self._forget_gone_tokens()
            self._kick()
        if dropped or self._by_user.pending:
            self._compact()
        self.ctx.log.info("multipliers.expired", dropped=dropped, entries=len(self._index))

    def _forget_gone_tokens(self) -> None:
        index = self._index
        for key in [key for key in self._symbols if key not in index]:
            del self._symbols[key]

    def _compact(self) -> None:
        alive = set(self._index.tokens())
        self._by_user.compact(alive.__contains__)
        self._compact_at = max(50_000, self._by_user.pairs // 4)
