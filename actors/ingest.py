"""The ingest actor: the signal feed's socket.io stream, brought in safely.

One incarnation is one connection. The actor owns a python-socketio ``AsyncClient`` made
with ``reconnection=False, handle_sigint=False``: when the connection drops it crashes,
and its supervisor's backoff restart is the reconnect (there is no other loop). Ctrl-C
reaches the runtime, not the client.

**Order.** The client runs every incoming message as its own task, in arrival order. The
handlers never await: they decode, drop duplicates and queue into the actor's own mailbox
(``tell_nowait``) before yielding, so the mailbox holds events in ``seq`` order. ``receive``
then hands token events to every token target with backpressure (``await tell``) and price
updates to every price target without waiting (they coalesce there too).

**Flood protection.** The mailbox is bounded and coalesces price updates by token: a newer
price for a token that is still queued replaces the older one in place, so a flood leaves
at most one queued price per token and only the newest is processed. Token events never
coalesce. If the mailbox still refuses an event, that event is not dropped: the actor
stops reading, finishes the message at hand and crashes, and the restart replays the
stream from the resume point (go-back-N, with the supervisor's backoff as the pause).

**Resume.** The resume point is the highest ``seq`` below which every received event is
handled (forwarded, superseded by a newer price, or a duplicate). Coalescing lets a newer
price, sitting in an older slot, be handled while older events still wait; such seqs
above the point are kept too (``<key>:ahead``, usually empty). Both are written to Redis
every ``save_interval`` when they changed, and once more when the incarnation ends (crash
included); the next incarnation reads them in ``started()``, connects with
``auth={"since_seq": point}`` and skips the handled-ahead seqs in the replay, so the feed
replays exactly what was not handled. Events an earlier connection left in the mailbox
are skipped (they are in the replay). Within a connection duplicates are dropped by
``seq`` and by ``event_id`` (a bounded FIFO of ``dedup_size`` ids). If Redis is down the
feed keeps flowing on the in-memory point and the failure is logged; an incarnation that
cannot read any point (Redis down at its start, or a first start) joins the feed live.
Only a process killed between two writes can repeat up to ``save_interval`` of events.

**Bad input** never crashes anything: each refusal is counted by reason (the
``callwatch_ingest_rejected_total`` counter, labels from `messages.wire.REJECT_REASONS`)
and logged with a sample of the payload (the first few per reason, then every 1000th).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import redis.exceptions
import socketio
from prometheus_client import Counter

from actors.store.handle import StoreHandle, StoreUnavailable
from messages.ingest import IngestReport, IngestStatus
from messages.settings import FeedSettings
from messages.wire import (
    KINDS,
    REJECT_REASONS,
    PriceUpdate,
    TokenEvent,
    WireEvent,
    WireRejected,
    decode_event,
)
from runtime import Actor, MailboxSpec, NameNotFound, Overflow, Ref

__all__ = [
    "DEFAULT_MAILBOX",
    "RESUME_KEY",
    "Fed",
    "FeedDisconnected",
    "Ingest",
    "IngestBehind",
    "decode_message",
    "feed_key",
    "ingest_mailbox",
]

RESUME_KEY: Final = "ingest:last_seq"
"""Redis key of the resume point (a decimal ``seq``); ``<key>:ahead`` beside it holds the
seqs above it that were already handled (space-separated, usually empty)."""
AHEAD_SUFFIX: Final = ":ahead"
AHEAD_MAX: Final = 20_000
"""Most handled-ahead seqs persisted; beyond that a restart may repeat a few prices."""
SAVE_INTERVAL_S: Final = 0.1
DEFAULT_MAILBOX: Final = 10_000
TRANSPORTS: Final = ("websocket",)
LOG_FIRST: Final = 5
"""Each kind of trouble logs its first few occurrences, then every ``LOG_EVERY``th."""
LOG_EVERY: Final = 1000
TARGET_RETRY_S: Final = 1.0
"""How often a target name that did not resolve is looked up again."""
DISCONNECT_TIMEOUT_S: Final = 2.0
SAMPLE_CHARS: Final = 160

_TOKEN: Final = TokenEvent.KIND
_PRICE: Final = PriceUpdate.KIND
_STORE_ERRORS: Final = (StoreUnavailable, redis.exceptions.RedisError, OSError, TimeoutError)

REJECTED = Counter("callwatch_ingest_rejected", "Feed input refused, by reason", ["reason"])
EVENTS = Counter("callwatch_ingest_events", "Valid new feed events received, by kind", ["kind"])
FORWARDED = Counter(
    "callwatch_ingest_forwarded", "Feed events handed to targets, by kind", ["kind"]
)
DUPLICATES = Counter("callwatch_ingest_duplicates", "Feed events dropped as already seen")
COALESCED = Counter(
    "callwatch_ingest_coalesced", "Price updates replaced in the mailbox by a newer one"
)
OVERFLOWED = Counter(
    "callwatch_ingest_overflowed",
    "Feed events refused by the full mailbox (replayed after a restart)",
    ["kind"],
)
LOST = Counter("callwatch_ingest_lost", "Feed events the feed could no longer replay")
UNDELIVERABLE = Counter(
    "callwatch_ingest_undeliverable", "Feed events a target could not take, by kind", ["kind"]
)
STORE_ERRORS = Counter(
    "callwatch_ingest_store_errors", "Failed reads and writes of the resume point"
)

_REJECTED_BY: Final = {reason: REJECTED.labels(reason) for reason in REJECT_REASONS}
_EVENTS_BY: Final = {kind: EVENTS.labels(kind) for kind in KINDS}
_FORWARDED_BY: Final = {kind: FORWARDED.labels(kind) for kind in KINDS}
for _kind in KINDS:
    OVERFLOWED.labels(_kind)
    UNDELIVERABLE.labels(_kind)


class Fed:
    """A decoded event in the mailbox, stamped with the connection (incarnation) that got
    it; ``key`` is the coalescing key (the token of a price update, None otherwise)."""

    __slots__ = ("conn", "event", "key")

    def __init__(self, event: WireEvent, conn: int, key: str | None) -> None:
        self.event = event
        self.conn = conn
        self.key = key

    def __repr__(self) -> str:
        return f"Fed({self.event.KIND} seq={self.event.seq} conn={self.conn})"


def feed_key(message: object) -> str | None:
    """Mailbox coalescing key: price updates by token; everything else never coalesces."""
    return message.key if type(message) is Fed else None


def ingest_mailbox(capacity: int = DEFAULT_MAILBOX) -> MailboxSpec:
    """The ingest mailbox with ``capacity`` (``FeedSettings.mailbox``), for the child spec."""
    return MailboxSpec(capacity=capacity, overflow=Overflow.COALESCE, key=feed_key)


class FeedDisconnected(Exception):
    """The feed connection ended; the restart reconnects."""


class IngestBehind(Exception):
    """The mailbox refused an event; the restart replays from the resume point."""


def display_url(url: str) -> str:
    """``scheme://host:port`` only: a feed URL may carry a token in its user part or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}" if parts.scheme else "<invalid url>"


def _sampled(count: int) -> bool:
    return count <= LOG_FIRST or count % LOG_EVERY == 0


def _sample(raw: Any) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= SAMPLE_CHARS else text[: SAMPLE_CHARS - 3] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def decode_message(kind: Any, args: tuple[Any, ...]) -> WireEvent | WireRejected:
    """One socket.io message (event name and arguments) as a feed event, or the reason it
    is refused; never raises. Feed events carry exactly one argument, their JSON text."""
    if len(args) > 1 and kind in KINDS:
        return WireRejected("wrong_type", f"$: one argument expected, got {len(args)}")
    raw: Any = args[0] if args else None
    try:
        return decode_event(kind, raw)
    except WireRejected as exc:
        return exc


class Ingest(Actor):
    """Reads the feed, forwards token events and price updates in ``seq`` order.

    ``token_targets`` / ``price_targets`` are registered names (``ctx.lookup``); a name that
    does not resolve is counted and logged, never a crash. Asked `IngestStatus`, answers an
    `IngestReport`.
    """

    mailbox = ingest_mailbox()

    def __init__(
        self,
        store: StoreHandle,
        url: str = "",
        token_targets: tuple[str, ...] = (),
        price_targets: tuple[str, ...] = (),
        settings: FeedSettings | None = None,
        resume_key: str = RESUME_KEY,
        save_interval: float = SAVE_INTERVAL_S,
    ) -> None:
        self._settings = settings if settings is not None else FeedSettings()
        self._url = url or self._settings.url
        if not self._url:
            raise ValueError("the ingest actor needs the feed's URL")
        self._store = store
        self._token_names = tuple(token_targets)
        self._price_names = tuple(price_targets)
        self._resume_key = resume_key
        self._save_interval = save_interval
        self._dedup_size = self._settings.dedup_size
        self._client: socketio.AsyncClient | None = None
        self._conn = 0
        self._tell_self: Any = None
        self._wall: Any = None
        self._connected = False
        self._closed = False
        self._lost_reason: str | None = None
        self._behind: int | None = None
        self._failure: BaseException | None = None
        # resume bookkeeping
        self._received = 0
        self._last_seq = 0
        self._saved: int | None = None
        self._saved_ahead: tuple[int, ...] = ()
        self._ahead: list[int] = []
        self._skip: set[int] = set()
        self._known = False
        self._outstanding: OrderedDict[int, None] = OrderedDict()
        self._pending: dict[str, int] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        # targets
        self._refs: dict[str, list[Ref]] = {_TOKEN: [], _PRICE: []}
        self._missing: dict[str, list[str]] = {_TOKEN: [], _PRICE: []}
        self._retry_at = 0.0
        # counts of this incarnation
        self._events = dict.fromkeys(KINDS, 0)
        self._forwarded = dict.fromkeys(KINDS, 0)
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._missing_counts: dict[str, int] = {}
        self._duplicates = 0
        self._coalesced = 0
        self._overflowed = 0
        self._stale = 0
        self._refused = 0
        self._lost = 0
        self._queued_max = 0
        self._store_errors = 0
        self._last_event_at: float | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def started(self) -> None:
        self._conn = self.ctx.incarnation
        self._tell_self = self.ctx.ref.tell_nowait
        self._wall = self.ctx.clock.wall
        point, ahead = await self._load()
        if point is not None:
            self._received = point
            self._saved = point
            self._saved_ahead = ahead
            self._skip = set(ahead)
            self._known = True
        self._resolve_targets()
        client = socketio.AsyncClient(
            reconnection=False, handle_sigint=False, logger=False, engineio_logger=False
        )
        client.on("connect", self._on_connect)
        client.on("disconnect", self._on_disconnect)
        client.on("connect_error", self._on_connect_error)
        client.on(_TOKEN, self._on_token_event)
        client.on(_PRICE, self._on_price_update)
        client.on("resume_gap", self._on_resume_gap)
        client.on("*", self._on_other)
        self._client = client
        auth = None if point is None else {"since_seq": point}
        timeout = self._settings.connect_timeout
        with anyio.fail_after(timeout + 1.0):
            await client.connect(
                self._url, auth=auth, transports=list(TRANSPORTS), wait_timeout=timeout
            )
        self.ctx.log.info(
            "ingest.connected",
            url=display_url(self._url),
            since_seq=point,
            incarnation=self.ctx.incarnation,
        )

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._saver)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()
        if self._failure is not None:
            raise self._failure
        if self._behind is not None:
            raise IngestBehind(
                f"mailbox full at seq {self._behind}; resuming from {self._watermark()}"
            )
        if self._lost_reason is not None:
            raise FeedDisconnected(f"feed connection lost: {self._lost_reason}")

    async def stopped(self) -> None:
        self._closed = True
        client = self._client
        if client is not None:
            with anyio.move_on_after(DISCONNECT_TIMEOUT_S):
                try:
                    await client.disconnect()
                except Exception as exc:  # a half-open client may fail in many ways
                    self.ctx.log.info("ingest.disconnect_failed", error=_describe(exc))
        self._connected = False
        await self._save()
        self.ctx.log.info(
            "ingest.stopped",
            last_seq=self._last_seq,
            resume_seq=self._watermark(),
            saved_seq=self._saved,
            saved_ahead=len(self._saved_ahead),
        )

    # -- messages ------------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if type(message) is Fed:
            await self._forward(message)
            return None
        if isinstance(message, IngestStatus):
            return self._report()
        self.ctx.log.warning("ingest.unknown_message", message_type=type(message).__name__)
        return None

    async def _forward(self, fed: Fed) -> None:
        if fed.conn != self._conn:
            self._stale += 1
            return
        event = fed.event
        seq = event.seq
        key = fed.key
        if key is None:
            kind = _TOKEN
            for ref in self._targets(kind):
                await ref.tell(event)
        else:
            kind = _PRICE
            if self._pending.get(key) == seq:
                del self._pending[key]
            for ref in self._targets(kind):
                if not ref.tell_nowait(event):
                    self._refused += 1
                    UNDELIVERABLE.labels(kind).inc()
        outstanding = self._outstanding
        outstanding.pop(seq, None)
        if outstanding and seq > next(iter(outstanding)):
            heapq.heappush(self._ahead, seq)
        if seq > self._last_seq:
            self._last_seq = seq
        self._forwarded[kind] += 1
        _FORWARDED_BY[kind].inc()

    def _targets(self, kind: str) -> list[Ref]:
        missing = self._missing[kind]
        if missing:
            now = self.ctx.clock.monotonic()
            if now >= self._retry_at:
                self._retry_at = now + TARGET_RETRY_S
                self._resolve_targets()
                missing = self._missing[kind]
            for name in missing:
                count = self._missing_counts.get(name, 0) + 1
                self._missing_counts[name] = count
                UNDELIVERABLE.labels(kind).inc()
                if _sampled(count):
                    self.ctx.log.warning(
                        "ingest.target_missing", target=name, kind=kind, count=count
                    )
        return self._refs[kind]

    def _resolve_targets(self) -> None:
        for kind, names in ((_TOKEN, self._token_names), (_PRICE, self._price_names)):
            refs: list[Ref] = []
            missing: list[str] = []
            for name in names:
                try:
                    refs.append(self.ctx.lookup(name))
                except NameNotFound:
                    missing.append(name)
            self._refs[kind] = refs
            self._missing[kind] = missing

    # -- socket.io handlers (never await: order is kept by queueing before any yield) ------

    def _on_token_event(self, *args: Any) -> None:
        self._accept(_TOKEN, args)

    def _on_price_update(self, *args: Any) -> None:
        self._accept(_PRICE, args)

    def _on_other(self, event: Any, *args: Any) -> None:
        self._accept(event, args)

    def _accept(self, kind: Any, args: tuple[Any, ...]) -> None:
        if self._closed:
            return
        try:
            event = decode_message(kind, args)
            if isinstance(event, WireRejected):
                self._reject(kind, args[0] if args else None, event)
            else:
                self._take(event)
        except Exception as exc:  # a bug here must crash the actor, not vanish in a task
            self._fail(exc)

    def _take(self, event: WireEvent) -> None:
        seq = event.seq
        received = self._received
        if seq <= received:
            self._duplicate(event, "seq")
            return
        if self._known and seq > received + 1:
            self._skipped(received, seq)
        if seq in self._skip:
            self._skip.discard(seq)
            self._handled_unforwarded(seq)
            self._duplicate(event, "handled_before_restart")
            return
        seen = self._seen
        event_id = event.event_id
        if event_id in seen:
            self._handled_unforwarded(seq)
            self._duplicate(event, "event_id")
            return
        key = event.token_key if type(event) is PriceUpdate else None
        previous = self._pending.get(key) if key is not None else None
        if not self._tell_self(Fed(event, self._conn, key)):
            self._overflow(event)
            return
        seen[event_id] = None
        if len(seen) > self._dedup_size:
            seen.popitem(last=False)
        self._received = seq
        self._known = True
        outstanding = self._outstanding
        outstanding[seq] = None
        if key is not None:
            if previous is not None:
                outstanding.pop(previous, None)
                self._coalesced += 1
                COALESCED.inc()
            self._pending[key] = seq
        if len(outstanding) > self._queued_max:
            self._queued_max = len(outstanding)
        kind = event.KIND
        self._events[kind] += 1
        _EVENTS_BY[kind].inc()
        self._last_event_at = self._wall()

    def _handled_unforwarded(self, seq: int) -> None:
        """``seq`` needs no forwarding; if older events are still queued it is handled
        ahead of the resume point, and a restart must not forward it either."""
        self._received = seq
        if self._outstanding:
            heapq.heappush(self._ahead, seq)

    def _on_resume_gap(self, *args: Any) -> None:
        if self._closed:
            return
        info = args[0] if args and isinstance(args[0], dict) else {}
        since, first = info.get("sinceSeq"), info.get("firstSeq")
        if not (type(since) is int and type(first) is int and first > since + 1):
            self.ctx.log.warning("ingest.resume_gap_malformed", sample=_sample(args))
            return
        lost = first - since - 1
        self._lost += lost
        LOST.inc(lost)
        if first - 1 > self._received:
            self._received = first - 1
        self.ctx.log.error("ingest.resume_gap", since_seq=since, first_seq=first, lost=lost)

    def _on_connect(self) -> None:
        if not self._closed:
            self._connected = True

    def _on_disconnect(self, reason: Any = None) -> None:
        self._connected = False
        if self._closed:
            return
        self._closed = True
        self._lost_reason = str(reason)
        self.ctx.log.warning(
            "ingest.disconnected", reason=str(reason), resume_seq=self._watermark()
        )
        self.ctx.stop()

    def _on_connect_error(self, data: Any = None) -> None:
        self.ctx.log.warning("ingest.connect_refused", detail=_sample(data))

    # -- trouble -------------------------------------------------------------------------

    def _reject(self, kind: Any, raw: Any, exc: WireRejected) -> None:
        reason = exc.reason if exc.reason in self._rejected else "wrong_type"
        count = self._rejected[reason] + 1
        self._rejected[reason] = count
        _REJECTED_BY[reason].inc()
        if _sampled(count):
            self.ctx.log.warning(
                "ingest.rejected",
                reason=reason,
                detail=exc.detail,
                event_name=_sample(kind)[:64],
                sample=_sample(raw),
                count=count,
            )

    def _duplicate(self, event: WireEvent, by: str) -> None:
        self._duplicates += 1
        DUPLICATES.inc()
        if _sampled(self._duplicates):
            self.ctx.log.info(
                "ingest.duplicate",
                by=by,
                seq=event.seq,
                event_id=event.event_id,
                count=self._duplicates,
            )

    def _skipped(self, received: int, seq: int) -> None:
        lost = seq - received - 1
        self._lost += lost
        LOST.inc(lost)
        self.ctx.log.error("ingest.seq_gap", after_seq=received, seq=seq, lost=lost)

    def _overflow(self, event: WireEvent) -> None:
        """Stop reading: this connection's later events are replayed after the restart."""
        self._closed = True
        self._behind = event.seq
        self._overflowed += 1
        OVERFLOWED.labels(event.KIND).inc()
        self.ctx.log.error(
            "ingest.mailbox_full",
            seq=event.seq,
            kind=event.KIND,
            queued=len(self._outstanding),
            resume_seq=self._watermark(),
        )
        self.ctx.stop()

    def _fail(self, exc: BaseException) -> None:
        self._closed = True
        if self._failure is None:
            self._failure = exc
        self.ctx.stop()

    # -- resume point --------------------------------------------------------------------

    def _watermark(self) -> int | None:
        """Every received ``seq`` up to this one is handled (None: nothing known yet)."""
        if self._outstanding:
            return next(iter(self._outstanding)) - 1
        return self._received if self._known else None

    async def _load(self) -> tuple[int | None, tuple[int, ...]]:
        key = self._resume_key
        try:
            with anyio.fail_after(self._store.call_timeout):
                raw, raw_ahead = await self._store.redis().mget([key, key + AHEAD_SUFFIX])
        except _STORE_ERRORS as exc:
            self._store_error("load", exc)
            self.ctx.log.error("ingest.resume_point_unavailable", note="joining the feed live")
            return None, ()
        if raw is None:
            self.ctx.log.info("ingest.no_resume_point", note="joining the feed live")
            return None, ()
        try:
            point = int(raw)
            ahead = tuple(int(s) for s in (raw_ahead or b"").split())
        except (TypeError, ValueError):
            point, ahead = -1, ()
        if point < 0:
            self.ctx.log.error("ingest.resume_point_invalid", sample=_sample(raw))
            return None, ()
        return point, tuple(s for s in ahead if s > point)

    async def _saver(self) -> None:
        while True:
            await self.ctx.clock.sleep(self._save_interval)
            await self._save()

    async def _save(self) -> None:
        point = self._watermark()
        if point is None:
            return
        ahead = self._ahead
        while ahead and ahead[0] <= point:
            heapq.heappop(ahead)
        handled = tuple(sorted(ahead)[:AHEAD_MAX])
        if point == self._saved and handled == self._saved_ahead:
            return
        try:
            with anyio.fail_after(self._store.call_timeout):
                await self._store.redis().mset(
                    {
                        self._resume_key: point,
                        self._resume_key + AHEAD_SUFFIX: " ".join(map(str, handled)),
                    }
                )
        except _STORE_ERRORS as exc:
            self._store_error("save", exc)
            return
        self._saved = point
        self._saved_ahead = handled

    def _store_error(self, op: str, exc: BaseException) -> None:
        self._store_errors += 1
        STORE_ERRORS.inc()
        if _sampled(self._store_errors):
            self.ctx.log.warning(
                "ingest.store_error", op=op, error=_describe(exc), count=self._store_errors
            )

    # -- status --------------------------------------------------------------------------

    def _report(self) -> IngestReport:
        point = self._watermark()
        return IngestReport(
            connected=self._connected,
            url=display_url(self._url),
            incarnation=self.ctx.incarnation,
            reconnects=max(0, self.ctx.incarnation - 1),
            last_seq=self._last_seq,
            resume_seq=point if point is not None else 0,
            saved_seq=self._saved,
            last_event_at=self._last_event_at,
            events=dict(self._events),
            forwarded=dict(self._forwarded),
            rejected={k: v for k, v in self._rejected.items() if v},
            duplicates=self._duplicates,
            coalesced=self._coalesced,
            overflowed=self._overflowed,
            stale=self._stale,
            lost=self._lost,
            queued=len(self._outstanding),
            queued_max=self._queued_max,
            missing_targets=dict(self._missing_counts),
            refused=self._refused,
            store_errors=self._store_errors,
        )
