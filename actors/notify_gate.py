"""The notify gate: a token reaches a user once, even across restarts and duplicates.

The shards decide; the gate makes each decision durable before anything is sent. Every
(user, token) a shard passes (`Passes`) is claimed atomically in the token's
processed-token set in Redis (see `CLAIM_SCRIPT`: the claim's expiry is its score, so it
follows the injected clock; the key's TTL lets Redis forget a token nobody was told
about for 14 days). The same script appends the notifications' history rows to the
outbox stream, so a claim and its history row are recorded together. Only a claim that
wins releases the notification to ``sender`` and the tracking request to
``multipliers``, in one message each per batch; a claim that loses was notified before
and sends nothing.

These sets are the users' processed-token memory (14 days): it lives in Redis rather
than in the user actors because a restart of anything must not forget it, and because a
message per passing user through their actors cost more than the decision itself.

Claims are batched into one Lua call per Redis round trip: while a batch is in flight
the next one fills, so the batch size follows the load (one claim at a time when idle,
hundreds under a burst); once ``parallel_at`` claims wait, up to ``max_in_flight``
batches are on the wire at once. At ``max_pending`` waiting claims the gate stops taking
more (the shards, the router and ingest wait in turn).

While Redis is down, claims wait and are retried; a claim older than ``max_wait`` is
dropped (nothing sent, counted and logged; a later event with new channels may pass it
again). Nothing is sent before its claim is recorded, so a crash can lose a notification
but never repeat one.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import structlog

from actors.store.handle import StoreHandle
from actors.store.outbox import DEFAULT_STREAM, NotificationRows
from actors.user_store import STORE_ERRORS
from messages.delivery import Lane, Outbound, Outbounds
from messages.settings import FilterSettingsSection
from messages.tracking import Track, TrackMany
from messages.users import Passed, Passes
from runtime import Actor, MailboxSpec, NameNotFound, Ref

__all__ = ["CLAIM_SCRIPT", "GATE_COUNTS", "GATE_IDLE", "NotifyGate"]

log = structlog.get_logger(__name__)

DAY: Final = 86400.0

CLAIM_SCRIPT: Final = r"""
local now = tonumber(ARGV[1])
local ttl = ARGV[2]
local s = ARGV[3]
local find, sub = string.find, string.sub
local out, rows = {}, {}
local pos, size = 1, #s
while pos <= size do
  local nl = find(s, '\n', pos, true)
  local a = find(s, '\31', pos, true)
  local b = find(s, '\31', a + 1, true)
  local c = find(s, '\31', b + 1, true)
  local key = 'cw:token:' .. sub(s, a + 1, b - 1) .. ':notified'
  local expires = sub(s, b + 1, c - 1)
  local template = sub(s, c, nl - 1)
  pos = nl + 1
  local users = {}
  while pos <= size and sub(s, pos, pos) ~= 'E' do
    nl = find(s, '\n', pos, true)
    users[#users + 1] = sub(s, pos, nl - 1)
    pos = nl + 1
  end
  local scores = redis.call('ZMSCORE', key, unpack(users))
  local add, won, taken = {}, {}, {}
  for i = 1, #users do
    local score, uid = scores[i], users[i]
    if taken[uid] or (score and tonumber(score) > now) then
      out[#out + 1] = '0'
    else
      taken[uid] = true
      out[#out + 1] = '1'
      add[#add + 1] = expires
      add[#add + 1] = uid
      won[#won + 1] = uid
    end
  end
  if #won > 0 then
    redis.call('ZADD', key, unpack(add))
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    redis.call('EXPIRE', key, ttl)
    rows[#rows + 1] = 'g'
    rows[#rows + 1] = #won .. template .. '\31' .. table.concat(won, ',')
  end
end
if #rows > 0 then redis.call('XADD', KEYS[1], '*', unpack(rows)) end
return table.concat(out)
"""
"""KEYS[1]: the history outbox stream. ARGV: now, ttl seconds, and the claims, one line
each: a line "E<US>token<US>expires<US>before<US>between<US>after" (US = \\x1f) starts
the claims of one event, then one line per user id. The history rows of an event's won
claims go to the outbox as one group, "count<US>before<US>between<US>after<US>id,id,..."
(a ``g`` field; the writer builds the rows, see `NotificationRows`), a batch's groups as
one entry. No part holds a newline or a \\x1f: the wire schema refuses
control characters in token keys, and JSON escapes them. Returns one character per user
line: "1" won (recorded: send), "0" already notified (or named twice in one event).

The processed-token memory is a sorted set per token (`notified_key`): member the user
id, score when the claim expires (by the injected clock, so tests can move time). One
event's claims cost three or four commands whatever the number of users (ZMSCORE for
all of them, ZADD of the winners, ZREMRANGEBYSCORE of the expired, EXPIRE so Redis
forgets a token 14 days after its last claim): a per-user layout cost a command or
more per claim, and a token that passes hundreds of users held Redis for tens of
milliseconds. The keys are built in the script, not passed as KEYS: fine on one Redis
server, which is what callwatch runs; a Redis Cluster would need KEYS grouped by slot."""

_UNSAFE: Final = ("\x1f", "\n", "\t")
MAX_BATCH: Final = 2_000
"""Claims per script call at most: an event's claims go to ZMSCORE and ZADD as Lua `unpack`
arguments (two per claim for ZADD), which Lua's stack bounds (8,000)."""


class _Event:
    """What every claim of one passed event shares, worked out once."""

    __slots__ = ("at", "chain", "fdv", "head", "symbol", "text", "token")

    def __init__(self, passed: Passed, at: float, accepted_ttl: float) -> None:
        event = passed.event
        self.at = at
        self.token = event.token_key
        self.fdv = float(event.fdv)
        self.chain = event.chain_id
        self.symbol = event.symbol
        self.text = passed.text
        rows = NotificationRows(self.token, self.fdv, datetime.fromtimestamp(at, UTC))
        expires = str(math.ceil(at + accepted_ttl)).encode()
        self.head = b"\x1f".join(
            (b"E", self.token.encode(), expires, rows.before, rows.between, rows.after)
        )
        """The script line that starts this event's claims."""


class NotifyGate(Actor):
    """Registered as ``notify-gate``; see the module docs."""

    mailbox = MailboxSpec(capacity=10_000)

    def __init__(
        self,
        store: StoreHandle,
        config: FilterSettingsSection | None = None,
        *,
        history_stream: str = DEFAULT_STREAM,
        max_batch: int = 256,
        max_in_flight: int = 8,
        parallel_at: int = 64,
        max_pending: int = 100_000,
        max_wait: float = 30.0,
        retry_s: float = 0.5,
        drain_s: float = 3.0,
        sender: str = "sender",
        multipliers: str = "multipliers",
    ) -> None:
        self.store = store
        self.accepted_ttl = (config or FilterSettingsSection()).accepted_ttl_days * DAY
        self.history_stream = history_stream
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1 to {MAX_BATCH}")
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_wait = max_wait
        self.retry_s = retry_s
        self.drain_s = drain_s
        self._names = (sender, multipliers)
        self._pending: deque[tuple[int, _Event]] = deque()
        """(user id, event): claims not yet on the wire."""
        self.max_in_flight = max_in_flight
        self.parallel_at = parallel_at
        self._in_flight = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._refs: dict[str, Ref] = {}
        self._scripts: dict[int, Any] = {}
        self._idle: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self.won = 0
        self.lost = 0
        self.dropped = 0
        self.undeliverable = 0

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self.ctx.process(self)
            # Stopping: let the batches on the wire finish (a claim recorded in Redis but
            # never sent would be a notification lost for good), and the rest drain.
            with anyio.move_on_after(self.drain_s):
                while self._in_flight:
                    idle = self._idle = anyio.Event()
                    await idle.wait()
            tg.cancel_scope.cancel()
        self._tg = None

    async def stopped(self) -> None:
        if self._pending and not self._in_flight:
            with anyio.move_on_after(1.0):
                while self._pending and await self._flush_once():
                    pass
        if self._pending:
            log.warning("notify_gate_unflushed", claims=len(self._pending))

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Passes):
            self._take(message)
            if self._tg is not None and self._pending and self._wants_flusher():
                self._in_flight += 1
                self._tg.start_soon(self._flush_loop)
            while len(self._pending) >= self.max_pending:
                room = self._room = anyio.Event()
                await room.wait()
            return None
        if message is GATE_IDLE:
            while self._pending or self._in_flight:
                idle = self._idle = anyio.Event()
                await idle.wait()
            return True
        if isinstance(message, _Counts):
            return {
                "won": self.won,
                "lost": self.lost,
                "dropped": self.dropped,
                "pending": len(self._pending),
                "undeliverable": self.undeliverable,
            }
        log.warning("notify_gate_unexpected", message=type(message).__name__)
        return None

    def _wants_flusher(self) -> bool:
        """One flusher while the claims are few: what arrives during its round trip goes in
        its next batch (a Redis call per batch is most of the gate's CPU). Another one, up
        to ``max_in_flight``, once ``parallel_at`` claims wait: a backlog does not wait out
        one round trip (mostly an fsync) at a time, and Redis shares one fsync among the
        batches of one turn."""
        if not self._in_flight:
            return True
        return self._in_flight < self.max_in_flight and len(self._pending) >= self.parallel_at

    def _take(self, message: Passes) -> None:
        pending = self._pending
        for passed in message.passed:
            token = passed.event.token_key
            if any(c in token for c in _UNSAFE):
                log.error("notify_gate_bad_token", token=token[:80])
                continue
            event = _Event(passed, message.now, self.accepted_ttl)
            pending.extend((user_id, event) for user_id in passed.user_ids)

    async def _flush_loop(self) -> None:
        try:
            while self._pending:
                if not await self._flush_once():
                    self._drop_stale()
                    await self.ctx.clock.sleep(self.retry_s)
        finally:
            self._in_flight -= 1
            if self._idle is not None:
                self._idle.set()

    async def _flush_once(self) -> bool:
        """Claim one batch; False when the store failed (the batch is put back)."""
        pending = self._pending
        batch = [pending.popleft() for _ in range(min(self.max_batch, len(pending)))]
        if self._room is not None and len(pending) < self.max_pending:
            self._room.set()
        if not batch:
            return True
        lines: list[bytes] = []
        ttl = math.ceil(self.accepted_ttl) + 1
        now = 0.0
        current: _Event | None = None
        for user_id, event in batch:
            if event is not current:
                current = event
                lines.append(event.head)
                now = max(now, event.at)
            lines.append(str(user_id).encode())
        lines.append(b"")
        try:
            client = self.store.redis()
            script = self._scripts.get(id(client))
            if script is None:
                self._scripts = {id(client): client.register_script(CLAIM_SCRIPT)}
                script = self._scripts[id(client)]
            results = await script(
                keys=[self.history_stream], args=[repr(now), ttl, b"\n".join(lines)]
            )
        except STORE_ERRORS as exc:
            self._pending.extendleft(reversed(batch))
            log.warning(
                "notify_gate_store_error", error=repr(exc)[:200], pending=len(self._pending)
            )
            return False
        if isinstance(results, str):
            results = results.encode()
        if len(results) != len(batch):
            raise RuntimeError(f"claim script answered {len(results)} results for {len(batch)}")
        outbound: list[Outbound] = []
        tracks: list[Track] = []
        for (user_id, event), won in zip(batch, results, strict=True):
            if won != 49:  # b"1"[0]
                self.lost += 1
                continue
            self.won += 1
            token = event.token
            outbound.append(
                Outbound(
                    chat_id=user_id,
                    text=event.text,
                    lane=Lane.ALERT,
                    dedup_key=f"call:{user_id}:{token}",
                    digest_key=f"alerts:{user_id}",
                    kind="notification",
                )
            )
            tracks.append(
                Track(
                    token_key=token,
                    user_id=user_id,
                    fdv_at_notify=event.fdv,
                    symbol=event.symbol,
                    chain=event.chain,
                )
            )
        if outbound:
            sender, multipliers = self._ref(self._names[0]), self._ref(self._names[1])
            if sender is None:
                self.undeliverable += len(outbound)
            else:
                await sender.tell(Outbounds(tuple(outbound)))
            if multipliers is not None:
                await multipliers.tell(TrackMany(tuple(tracks)))
        return True

    def _drop_stale(self) -> None:
        if not self._pending:
            return
        oldest_ok = self.ctx.clock.wall() - self.max_wait
        kept = deque(claim for claim in self._pending if claim[1].at >= oldest_ok)
        dropped = len(self._pending) - len(kept)
        if dropped:
            self.dropped += dropped
            log.error("notify_gate_dropped", dropped=dropped, reason="store down too long")
        self._pending = kept
        if self._room is not None and len(kept) < self.max_pending:
            self._room.set()

    def _ref(self, name: str) -> Ref | None:
        ref = self._refs.get(name)
        if ref is None or not ref.alive:
            try:
                ref = self.ctx.lookup(name)
            except NameNotFound:
                log.error("notify_gate_no_target", name=name)
                return None
            self._refs[name] = ref
        return ref


class _Counts:
    """Ask the gate for its counters (tests, status)."""


GATE_COUNTS: Final = _Counts()
GATE_IDLE: Final = object()
"""Ask: answered once every claim received so far is decided and released (tests)."""
