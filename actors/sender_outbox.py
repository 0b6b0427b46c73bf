"""The sender's durable outbox in Redis: what was accepted and not yet confirmed by Telegram.

Keys (under a namespace, ``callwatch:sender`` by default):

- ``<ns>:pending`` — hash, message id -> the :class:`Record` as JSON. Written before a message
  may be sent, deleted once Telegram accepted it (or refused it for good).
- ``<ns>:inflight`` — hash, message id -> wall time of the attempt. Written just before each
  request and cleared when its answer proves the message was not delivered (429). A message
  found here at start-up was on the wire when the previous sender died: its fate is unknown.
- ``<ns>:dedup:<dedup_key>`` — string with a TTL (14 days): the id that owns this key. Set in
  the same script that writes the record, so a key is claimed exactly when its message is.

JSON (not msgpack) so the records read the same whether the shared client decodes responses
or not. Every call goes straight to the live client of the :class:`StoreHandle` and raises
:class:`StoreUnavailable` or a redis error when the server is away; the actor retries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from actors.store.handle import StoreHandle
from messages.delivery import Outbound

__all__ = ["Loaded", "Outbox", "Record"]

log = structlog.get_logger(__name__)

# KEYS[1] pending hash, KEYS[2] dedup key (optional); ARGV id, record, ttl seconds.
# Re-running it for the same id is harmless, so a batch cut short by a lost connection is
# simply written again.
_SAVE = """
if KEYS[2] then
  if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[3]) then
    local owner = redis.call('GET', KEYS[2])
    if owner ~= ARGV[1] then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """One pending message as stored."""

    id: str
    outbound: Outbound
    accepted_at: float
    """Wall-clock time it was accepted."""
    seq: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a new sender finds at start-up."""

    records: list[Record]
    """Pending messages, oldest first."""
    unknown_fate: frozenset[str]
    """Ids of those that were in flight when the previous sender died."""
    corrupt: int
    """Records that could not be decoded (deleted, counted)."""


class Outbox:
    """Reads and writes the outbox keys through the store handle's live client."""

    def __init__(
        self, store: StoreHandle, namespace: str = "callwatch:sender", dedup_ttl_s: int = 1_209_600
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.pending_key = f"{namespace}:pending"
        self.inflight_key = f"{namespace}:inflight"
        self.dedup_ttl_s = max(1, int(dedup_ttl_s))
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(Record)

    def dedup_key(self, key: str) -> str:
        return f"{self.namespace}:dedup:{key}"

    async def save(self, records: list[Record]) -> list[bool]:
        """Write records (one pipeline); False for a record whose dedup_key is already taken."""
        if not records:
            return []
        client = self.store.redis()
        script = client.register_script(_SAVE)
        async with client.pipeline(transaction=False) as pipe:
            for record in records:
                keys = [self.pending_key]
                if record.outbound.dedup_key is not None:
                    keys.append(self.dedup_key(record.outbound.dedup_key))
                await script(
                    keys=keys,
                    args=[record.id, self._encoder.encode(record), self.dedup_ttl_s],
                    client=pipe,
                )
            results = await pipe.execute()
        return [int(r) == 1 for r in results]

    async def mark_in_flight(self, ids: Iterable[str], wall: float) -> None:
        mapping: Any = {i: repr(wall) for i in ids}
        if mapping:
            await self.store.redis().hset(self.inflight_key, mapping=mapping)

    async def finish(self, done: list[str], not_sent: list[str]) -> None:
        """Delete finished records; clear the in-flight mark of those proven not delivered."""
        if not done and not not_sent:
            return
        client = self.store.redis()
        async with client.pipeline(transaction=False) as pipe:
            if done:
                pipe.hdel(self.pending_key, *done)
                pipe.hdel(self.inflight_key, *done)
            if not_sent:
                pipe.hdel(self.inflight_key, *not_sent)
            await pipe.execute()

    async def load(self) -> Loaded:
        """Every pending record, oldest first, and which of them have an unknown fate."""
        client = self.store.redis()
        records: list[Record] = []
        corrupt: list[str] = []
        async for key, value in client.hscan_iter(self.pending_key, count=1_000):
            try:
                records.append(self._decoder.decode(value))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                name = key.decode() if isinstance(key, bytes) else str(key)
                corrupt.append(name)
                log.warning("sender.outbox_corrupt_record", id=name, error=str(exc))
        inflight = {
            k.decode() if isinstance(k, bytes) else str(k)
            for k in await client.hkeys(self.inflight_key)
        }
        ids = {r.id for r in records}
        orphans = [i for i in inflight if i not in ids]
        if corrupt or orphans:
            async with client.pipeline(transaction=False) as pipe:
                if corrupt:
                    pipe.hdel(self.pending_key, *corrupt)
                if orphans:
                    pipe.hdel(self.inflight_key, *orphans)
                await pipe.execute()
        records.sort(key=lambda r: (r.accepted_at, r.seq))
        return Loaded(records, frozenset(inflight & ids), len(corrupt))
