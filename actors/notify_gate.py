"""The notify gate: a token reaches a user once, even across restarts and duplicates.

User actors decide; the gate makes the decision durable before anything is sent. Each
`Claim` is an atomic "set if absent" of the token in the user's processed-token hash in
Redis (with its expiry stored in the value, so expiry follows the injected clock, and the
key's TTL refreshed so Redis forgets idle users). Only a claim that wins releases its
`Outbound` to ``sender`` and its `Track` to ``multipliers``; a claim that loses was
notified before and sends nothing.

Claims from all user actors are batched into one Lua call per Redis round trip: while a
batch is in flight the next one fills, so the batch size follows the load (one claim at
a time when idle, hundreds under a burst) and Redis is never asked once per
notification; under a backlog up to ``max_in_flight`` batches are on the wire at once,
so the gate does not wait a round trip (and a busy event loop's turn) per batch.

While Redis is down, claims wait and are retried; a claim older than ``max_wait`` is
dropped (nothing sent; the user actor is told so it may try again). Nothing is sent
before its claim is recorded, so a crash can lose a notification but never repeat one.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import structlog

from actors.store.handle import StoreHandle, StoreUnavailable
from actors.store.outbox import HistoryRejected, append_history_many
from actors.user_store import STORE_ERRORS
from messages.users import Claim, ClaimDropped
from runtime import Actor, MailboxSpec, NameNotFound, Ref

__all__ = ["CLAIM_SCRIPT", "GATE_COUNTS", "GATE_IDLE", "NotifyGate"]

log = structlog.get_logger(__name__)

CLAIM_SCRIPT: Final = r"""
local now = tonumber(ARGV[1])
local ttl = ARGV[2]
local out = {}
for uid, field, value in string.gmatch(ARGV[3], '([^\t\n]+)\t([^\t\n]+)\t([^\n]*)\n') do
  local key = 'cw:user:' .. uid .. ':accepted'
  local won = redis.call('HSETNX', key, field, value)
  if won == 0 then
    local old = redis.call('HGET', key, field)
    local expires = tonumber(string.match(old or '', '^(%S+)'))
    if expires == nil or expires <= now then
      redis.call('HSET', key, field, value)
      won = 1
    end
  end
  if won == 1 then
    redis.call('EXPIRE', key, ttl)
    local size = redis.call('HLEN', key)
    if size > 512 and size % 256 == 1 then
      local all = redis.call('HGETALL', key)
      for j = 1, #all, 2 do
        local e = tonumber(string.match(all[j + 1], '^(%S+)'))
        if e == nil or e <= now then redis.call('HDEL', key, all[j]) end
      end
    end
  end
  out[#out + 1] = won
end
return table.concat(out)
"""
"""ARGV: now, ttl seconds, and one line per claim: "<user>\\t<token>\\t<value>\\n" (token keys
and symbols never hold tabs or newlines: the wire schema refuses control characters).
Returns one character per claim: "1" won (recorded: send), "0" already notified.
Expired fields of a big hash are swept every 256 new ones (not at every claim: a lenient
user may hold thousands of tokens in 14 days).

The keys (`accepted_key`) are built in the script, not passed as KEYS: a burst of claims
is one short command instead of three arguments per claim. Fine on one Redis server,
which is what callwatch runs; a Redis Cluster would need KEYS grouped by slot."""


class NotifyGate(Actor):
    """Registered as ``notify-gate``; see the module docs."""

    mailbox = MailboxSpec(capacity=200_000)

    def __init__(
        self,
        store: StoreHandle,
        *,
        max_batch: int = 256,
        max_in_flight: int = 4,
        max_wait: float = 30.0,
        retry_s: float = 0.5,
        drain_s: float = 3.0,
        sender: str = "sender",
        multipliers: str = "multipliers",
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.retry_s = retry_s
        self.drain_s = drain_s
        self._names = (sender, multipliers)
        self._pending: deque[Claim] = deque()
        self.max_in_flight = max_in_flight
        self.spread_at = max(1, max_batch // 8)
        """Claims waiting behind a busy flusher that call for one more."""
        self._in_flight = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._refs: dict[str, Ref] = {}
        self._scripts: dict[int, Any] = {}
        self._idle: anyio.Event | None = None
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
        if isinstance(message, Claim):
            if "\t" in message.token_key or "\n" in message.token_key:
                log.error("notify_gate_bad_token", token=message.token_key[:80])
                return None
            self._pending.append(message)
            # One flusher while idle; more (up to max_in_flight) while a backlog builds, so
            # the next batch is on its way while Redis answers the previous one.
            busy = self._in_flight
            if self._tg is not None and (
                busy == 0 or (busy < self.max_in_flight and len(self._pending) >= self.spread_at)
            ):
                self._in_flight += 1
                self._tg.start_soon(self._flush_loop)
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
        batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        if not batch:
            return True
        lines = []
        ttl = 1
        now = 0.0
        for claim in batch:
            track = claim.track
            symbol = track.symbol
            if "\t" in symbol or "\n" in symbol:  # never from the feed; keep the lines intact
                symbol = " ".join(symbol.split())
            lines.append(
                f"{claim.user_id}\t{claim.token_key}\t{math.ceil(claim.expires_at)} "
                f"{track.fdv_at_notify!r} {int(claim.now)} {symbol}\n"
            )
            ttl = max(ttl, int(claim.expires_at - claim.now) + 1)
            now = max(now, claim.now)
        try:
            client = self.store.redis()
            script = self._scripts.get(id(client))
            if script is None:
                self._scripts = {id(client): client.register_script(CLAIM_SCRIPT)}
                script = self._scripts[id(client)]
            results = await script(args=[repr(now), ttl, "".join(lines)])
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
        sender, multipliers = self._ref(self._names[0]), self._ref(self._names[1])
        history: list[tuple[str, dict[str, Any]]] = []
        for claim, won in zip(batch, results, strict=True):
            if won != 49:  # b"1"[0]
                self.lost += 1
                continue
            self.won += 1
            history.append(("notifications", _history_row(claim)))
            if sender is None:
                self.undeliverable += 1
            else:
                await sender.tell(claim.outbound)
            if multipliers is not None:
                await multipliers.tell(claim.track)
        await self._record(history)
        return True

    async def _record(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """The notifications history (reports, admin stats) through the outbox; best
        effort: the claim in Redis is what keeps a token from being notified twice."""
        if not rows:
            return
        try:
            await append_history_many(self.store, rows)
        except (StoreUnavailable, HistoryRejected) as exc:
            log.warning("notify_gate_history_not_recorded", rows=len(rows), error=str(exc)[:200])

    def _drop_stale(self) -> None:
        if not self._pending:
            return
        oldest_ok = self.ctx.clock.wall() - self.max_wait
        kept: deque[Claim] = deque()
        for claim in self._pending:
            if claim.now >= oldest_ok:
                kept.append(claim)
                continue
            self.dropped += 1
            if isinstance(claim.reply_to, Ref):
                claim.reply_to.tell_nowait(ClaimDropped(claim.token_key))
        if len(kept) != len(self._pending):
            log.error("notify_gate_dropped", dropped=len(self._pending) - len(kept))
        self._pending = kept

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


def _history_row(claim: Claim) -> dict[str, Any]:
    return {
        "dedup_key": f"call:{claim.token_key}:{claim.user_id}",
        "chat_id": claim.user_id,
        "token_key": claim.token_key,
        "kind": "call",
        "threshold": 0,
        "fdv": float(claim.track.fdv_at_notify),
        "sent_at": datetime.fromtimestamp(claim.now, UTC),
    }
