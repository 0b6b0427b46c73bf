"""The history outbox: rows go to a Redis stream, a writer drains them into PostgreSQL.

History (notifications, calls, activity, settings changes) must not be lost when PostgreSQL
is down, and must not slow the hot path while it is up. Producers call
:func:`append_history`: one ``XADD`` (fsynced by Redis before it answers), so an acknowledged
row is durable. :class:`OutboxWriter` drains the stream in batches, one transaction per batch,
and removes entries from the stream only after that transaction committed. Every row has a
unique key (a producer-made ``dedup_key``, or the table's natural key where it has one: a
notification per user, token, kind and threshold; a call per channel and token) and a row
already present is skipped (``ON CONFLICT DO NOTHING``), so replaying a batch after any crash
inserts nothing twice.

Design choices, measured (see ``bench/store.py``):

* Acknowledge by trimming, not with a consumer group. The writer reads from the head of the
  stream with ``XRANGE`` and, after COMMIT, removes what it wrote with ``XTRIM MINID``; the
  stream itself is the backlog, so a restarted writer simply starts at the head again (what a
  consumer group's pending list would re-deliver). Per row, Redis does half the work of
  ``XREADGROUP`` + ``XACK`` + ``XDEL``, and nothing can be acked but left behind.
* Reads go through a small Lua script that returns a whole batch as two strings: redis-py's
  pure-Python reply parser manages about 10,000 stream entries a second, the script ten times
  that. Batches are read in chunks of :data:`READ_CHUNK`, so Redis never stalls other clients
  for long.
* Each row is one ``h`` field = ``table TAB columns TAB json``; an entry holds one row, or
  several (``h`` repeated), or groups of notification rows (``g``: the notify gate appends
  a batch of claims as one entry, one group per event; see `NotificationRows`). The
  writer never decodes the JSON: it joins a batch's rows into one JSON array and lets
  PostgreSQL expand it with ``json_populate_recordset`` in a single
  ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``. That beat ``COPY`` into a temporary
  table (whose rows must first be decoded and converted in Python) and ``executemany``.
* Reading the next batch overlaps with writing, and :data:`INSERTERS` batches are written at
  once on connections of their own; the stream is trimmed in stream order all the same.
* A trickle is written a batch at a time: after a batch smaller than ``outbox_batch`` the
  writer lingers ``outbox_linger_ms`` before reading again (a transaction per notify-gate
  entry cost the users flow a fifth of its CPU at 1,000 events/s).

Rows PostgreSQL refuses (a CHECK the producer-side validation cannot see) do not block the
stream: the batch is retried row by row and each refused row goes, with its reason, to the
dead-letter stream ``<stream>:dead``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any, Final

import anyio
import asyncpg
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT, FieldT

from actors.store.handle import StoreHandle, StoreUnavailable
from actors.store.owner import describe
from messages.settings import StoreSettings
from runtime import Actor, MailboxSpec

__all__ = [
    "DEFAULT_STREAM",
    "GROUP_MARK",
    "HISTORY_TABLES",
    "READ_CHUNK",
    "HistoryRejected",
    "NotificationRows",
    "OutboxCounters",
    "OutboxStats",
    "OutboxStatus",
    "OutboxWriter",
    "append_history",
    "append_history_many",
    "dead_letter_stream",
    "encode_history",
    "expand_groups",
    "outbox_status",
]

DEFAULT_STREAM: Final = StoreSettings().outbox_stream
READ_CHUNK: Final = 1_000
"""Entries, and rows past the first entry, per read script call (bounds how long one call
holds Redis)."""
DEAD_LETTER_MAXLEN: Final = 100_000
INSERTERS: Final = 2
"""Batches written to PostgreSQL at once, each on its own connection (index upkeep is
CPU-bound in the server: two backends use two cores)."""
BATCH_TIMEOUT_S: Final = 60.0
"""How long one batch INSERT may take (a busy server is slow, not gone; the owner's probe
notices a gone one within a second and closes the pool under us)."""
MAX_DEDUP_KEY: Final = 200
_BIGINT = (-(2**63), 2**63 - 1)
_INT = (-(2**31), 2**31 - 1)

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
# Errors that are about a row's content, not about the connection: isolate the row.
_ROW_ERRORS = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)


class Kind(Enum):
    TEXT = "text"
    BIGINT = "bigint"
    INT = "integer"
    NUMERIC = "numeric"
    TIMESTAMP = "timestamptz"
    OBJECT = "jsonb object"


@dataclass(frozen=True, slots=True)
class TableSpec:
    columns: Mapping[str, Kind]
    required: frozenset[str]
    """NOT NULL columns without a default: a row must carry them."""


HISTORY_TABLES: Final[Mapping[str, TableSpec]] = {
    "notifications": TableSpec(
        {
            "dedup_key": Kind.TEXT,
            "chat_id": Kind.BIGINT,
            "token_key": Kind.TEXT,
            "kind": Kind.TEXT,
            "threshold": Kind.INT,
            "fdv": Kind.NUMERIC,
            "message_id": Kind.BIGINT,
            "sent_at": Kind.TIMESTAMP,
        },
        frozenset({"dedup_key", "chat_id", "token_key", "kind"}),
    ),
    "calls_history": TableSpec(
        {
            "dedup_key": Kind.TEXT,
            "event_id": Kind.TEXT,
            "channel_id": Kind.TEXT,
            "channel_username": Kind.TEXT,
            "token_key": Kind.TEXT,
            "chain": Kind.TEXT,
            "symbol": Kind.TEXT,
            "called_at": Kind.TIMESTAMP,
            "fdv_at_call": Kind.NUMERIC,
            "peak_fdv": Kind.NUMERIC,
            "peak_at": Kind.TIMESTAMP,
            "recorded_at": Kind.TIMESTAMP,
        },
        frozenset(
            {
                "dedup_key",
                "event_id",
                "channel_id",
                "token_key",
                "chain",
                "called_at",
                "fdv_at_call",
            }
        ),
    ),
    "activity_log": TableSpec(
        {
            "dedup_key": Kind.TEXT,
            "actor_kind": Kind.TEXT,
            "actor_id": Kind.BIGINT,
            "action": Kind.TEXT,
            "subject_id": Kind.BIGINT,
            "detail": Kind.OBJECT,
            "at": Kind.TIMESTAMP,
        },
        frozenset({"dedup_key", "actor_kind", "action"}),
    ),
    "settings_changes": TableSpec(
        {
            "dedup_key": Kind.TEXT,
            "chat_id": Kind.BIGINT,
            "changed_by": Kind.BIGINT,
            "before": Kind.OBJECT,
            "after": Kind.OBJECT,
            "changed_at": Kind.TIMESTAMP,
        },
        frozenset({"dedup_key", "chat_id", "after"}),
    ),
}
"""The history tables the outbox may write, their columns (``id`` is generated) and the
columns a row must carry. A test checks this against the migrated schema."""

_encoder = msgspec.json.Encoder(decimal_format="string")


class HistoryRejected(ValueError):
    """A history row was refused before it reached the stream; the reason says why."""

    def __init__(self, table: str, reason: str) -> None:
        super().__init__(f"history row for {table!r} rejected: {reason}")
        self.table = table
        self.reason = reason


def _check_value(table: str, column: str, kind: Kind, value: object) -> None:
    def bad(expected: str) -> HistoryRejected:
        return HistoryRejected(table, f"{column} must be {expected}, not {type(value).__name__}")

    if kind is Kind.TEXT:
        if not isinstance(value, str):
            raise bad("a string")
        if "\x00" in value:
            raise HistoryRejected(table, f"{column} contains a NUL character")
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise HistoryRejected(table, f"{column} is not valid Unicode") from None
    elif kind in (Kind.BIGINT, Kind.INT):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        low, high = _BIGINT if kind is Kind.BIGINT else _INT
        if not low <= value <= high:
            raise HistoryRejected(table, f"{column} is out of range for {kind.value}")
    elif kind is Kind.NUMERIC:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise bad("a number")
        if isinstance(value, float | Decimal) and not math.isfinite(value):
            raise HistoryRejected(table, f"{column} must be finite")
    elif kind is Kind.TIMESTAMP:
        if not isinstance(value, datetime):
            raise bad("a datetime")
        if value.tzinfo is None or value.utcoffset() is None:
            raise HistoryRejected(table, f"{column} must carry a time zone")
    elif kind is Kind.OBJECT and not isinstance(value, dict):
        raise bad("a dict (a JSON object)")


def encode_history(table: str, row: Mapping[str, Any]) -> bytes:
    """Validate ``row`` for ``table`` and return the stream entry's payload.

    Raises :class:`HistoryRejected` with a reason for an unknown table, a missing or bad
    ``dedup_key``, an unknown column, a missing required column or a value of the wrong kind.
    """
    spec = HISTORY_TABLES.get(table) if isinstance(table, str) else None
    if spec is None:
        raise HistoryRejected(
            str(table)[:64], f"not a history table (one of {sorted(HISTORY_TABLES)})"
        )
    if not isinstance(row, Mapping):
        raise HistoryRejected(table, f"a row is a mapping, not {type(row).__name__}")
    key = row.get("dedup_key")
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_DEDUP_KEY:
        raise HistoryRejected(
            table, f"dedup_key must be a string of 1 to {MAX_DEDUP_KEY} characters"
        )
    present: list[str] = []
    for column, value in row.items():
        kind = spec.columns.get(column) if isinstance(column, str) else None
        if kind is None:
            raise HistoryRejected(table, f"unknown column {str(column)[:64]!r}")
        if value is None:
            if column in spec.required:
                raise HistoryRejected(table, f"{column} must not be null")
            continue
        _check_value(table, column, kind, value)
        present.append(column)
    missing = spec.required.difference(present)
    if missing:
        raise HistoryRejected(table, f"missing required columns {sorted(missing)}")
    present.sort()
    try:
        body = _encoder.encode({column: row[column] for column in present})
    except (TypeError, ValueError, OverflowError) as exc:
        raise HistoryRejected(table, f"not encodable as JSON: {exc}") from None
    return f"{table}\t{','.join(present)}\t".encode() + body


class NotificationRows:
    """``notifications`` rows ("call" alerts) of one token event for any number of users,
    made from parts already typed and validated (ids from the directory, token keys from
    the wire decoder).

    A row for chat ``c`` is ``before + c + between + c + after``: the notify gate hands the
    three parts to its claim script once per event, and the script appends them once, with
    the ids it recorded, as a group: a ``g`` field ``count<US>before<US>between<US>after<US>
    id,id,...`` (US = \\x1f). The writer expands a group into its rows (`expand_groups`), so
    a notification costs Redis neither a row of its own nor its bytes: building a row per
    claim in Lua was a third of the claim script's work. A test holds `row` equal to
    `encode_history`'s checked encoding. Anything PostgreSQL still refuses goes to the
    dead-letter stream.
    """

    __slots__ = ("after", "before", "between")

    _HEAD: Final = b"notifications\tchat_id,dedup_key,fdv,kind,sent_at,threshold,token_key\t"

    def __init__(self, token_key: str, fdv: float, sent_at: datetime) -> None:
        rest = _encoder.encode(
            {"fdv": fdv, "kind": "call", "sent_at": sent_at, "threshold": 0, "token_key": token_key}
        )
        self.before: bytes = self._HEAD + b'{"chat_id":'
        self.between: bytes = b',"dedup_key":' + _encoder.encode(f"call:{token_key}:")[:-1]
        self.after: bytes = b'",' + rest[1:]

    def row(self, chat_id: int) -> bytes:
        """The outbox payload of this event's row for ``chat_id``."""
        uid = str(int(chat_id)).encode()
        return self.before + uid + self.between + uid + self.after


def dead_letter_stream(stream: str) -> str:
    return f"{stream}:dead"


async def append_history(
    handle: StoreHandle,
    table: str,
    row: Mapping[str, Any],
    *,
    stream: str = DEFAULT_STREAM,
) -> str:
    """Append one history row to the outbox; returns the stream entry id once Redis has it.

    Raises :class:`HistoryRejected` for a bad row and :class:`StoreUnavailable` (within the
    call timeout, never a hang) when Redis is down: the row was then not acknowledged, and
    the caller may append it again with the same ``dedup_key``.
    """
    payload = encode_history(table, row)
    client = handle.redis()
    try:
        with anyio.fail_after(handle.call_timeout):
            entry_id = await client.xadd(stream, {"h": payload})
    except _REDIS_DOWN as exc:
        raise StoreUnavailable("redis", describe(exc)) from exc
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


_APPEND_SCRIPT: Final = """
local ids = {}
for i = 1, #ARGV do ids[i] = redis.call('XADD', KEYS[1], '*', 'h', ARGV[i]) end
return table.concat(ids, ' ')
"""
APPEND_CHUNK: Final = 1_000
"""Rows per bulk-append script call (one round trip, one call timeout)."""


async def append_history_many(
    handle: StoreHandle,
    rows: Iterable[tuple[str, Mapping[str, Any]]],
    *,
    stream: str = DEFAULT_STREAM,
) -> list[str]:
    """Append many rows, :data:`APPEND_CHUNK` per round trip; returns their entry ids.

    Every row is validated before any is sent. A small Lua script appends a chunk inside
    Redis (about four times the rate of a redis-py pipeline, whose reply parsing is the
    bottleneck). On :class:`StoreUnavailable` some chunks may already be in: appending
    the same rows again is safe, their ``dedup_key`` keeps PostgreSQL free of doubles.
    """
    payloads = [encode_history(table, row) for table, row in rows]
    ids: list[str] = []
    if not payloads:
        return ids
    client = handle.redis()
    script = client.register_script(_APPEND_SCRIPT)
    try:
        for start in range(0, len(payloads), APPEND_CHUNK):
            with anyio.fail_after(handle.call_timeout):
                joined = await script(keys=[stream], args=payloads[start : start + APPEND_CHUNK])
            ids.extend(_text(joined).split(" "))
    except _REDIS_DOWN as exc:
        raise StoreUnavailable("redis", describe(exc)) from exc
    return ids


# --------------------------------------------------------------------------- the writer

# Returns {last id, entries, rows joined by "\n", more}; an entry that is not ours becomes
# "!" .. id, a group ("g") "\30" .. its value. A row never holds a raw newline: table and
# columns are identifiers, JSON escapes them. At most ARGV[2] entries and, past the first
# entry, ARGV[2] rows (an entry may hold many, a group counts its rows, so entries are
# fetched a few at a time); ``more`` is 0 once the stream is exhausted.
_READ_SCRIPT: Final = """
local limit = tonumber(ARGV[2])
local start = ARGV[1]
local rows, count, last, taken, more = {}, 0, '', 0, 1
while more == 1 do
  local want = math.min(64, limit - taken)
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', want)
  for i = 1, #entries do
    local f = entries[i][2]
    local ok, size = #f >= 2 and #f % 2 == 0, 0
    for j = 1, #f, 2 do
      if not ok then break end
      local v = f[j + 1]
      ok = not string.find(v, '\\n', 1, true)
      if f[j] == 'h' then
        size = size + 1
      elseif f[j] == 'g' and ok then
        local n = tonumber(string.match(v, '^(%d+)\\31'))
        ok = n ~= nil and n >= 1
        if ok then size = size + n end
      else
        ok = false
      end
    end
    if not ok then size = 1 end
    if count > 0 and count + size > limit then
      return {last, taken, table.concat(rows, '\\n'), 1}
    end
    if ok then
      for j = 1, #f, 2 do
        if f[j] == 'g' then rows[#rows + 1] = '\\30' .. f[j + 1] else rows[#rows + 1] = f[j + 1] end
      end
    else
      rows[#rows + 1] = '!' .. entries[i][1]
    end
    last, taken, count = entries[i][1], taken + 1, count + size
  end
  if #entries < want then more = 0 end
  if taken >= limit or count >= limit then break end
  start = '(' .. last
end
return {last, taken, table.concat(rows, '\\n'), more}
"""


GROUP_MARK: Final = b"\x1e"
"""How the read script marks a group's value among the rows it returns."""


def expand_groups(rows: list[bytes]) -> list[bytes]:
    """Rows as read, with every notification group (see `NotificationRows`) replaced by its
    rows; a malformed group stays as it is, for `_sort` to set aside with its reason."""
    if not any(row[:1] == GROUP_MARK for row in rows):
        return rows
    out: list[bytes] = []
    for row in rows:
        if row[:1] != GROUP_MARK:
            out.append(row)
            continue
        parts = row[1:].split(b"\x1f")
        uids = parts[4].split(b",") if len(parts) == 5 else []
        if not uids or not all(uid.isdigit() for uid in uids):
            out.append(row)
            continue
        _, before, between, after, _ = parts
        out.extend(before + uid + between + uid + after for uid in uids)
    return out


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def next_id(entry_id: str) -> str:
    """The smallest stream id after ``entry_id``."""
    ms, _, seq = entry_id.partition("-")
    if int(seq) >= 2**64 - 1:
        return f"{int(ms) + 1}-0"
    return f"{ms}-{int(seq) + 1}"


class OutboxStats(msgspec.Struct, frozen=True):
    """Ask the outbox writer how it is doing; the reply is an :class:`OutboxStatus`."""


class OutboxStatus(msgspec.Struct, frozen=True, kw_only=True):
    pending: int | None
    """Rows waiting in the stream (None while Redis is unreachable)."""
    lag_s: float | None
    """Age of the oldest waiting row (0 when none; None while Redis is unreachable)."""
    drained_total: int
    """Rows written to PostgreSQL (inserted or found already there) since the process began."""
    inserted_total: int
    duplicates_total: int
    """Rows whose dedup_key was already in PostgreSQL (replays)."""
    dead_lettered_total: int
    batches_total: int
    last_batch: int
    incarnation: int
    """The writer incarnation that answered (0: read with :func:`outbox_status`)."""


@dataclass
class OutboxCounters:
    """Totals that survive the writer's restarts (the child spec holds this object)."""

    drained: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    last_batch: int = 0


@dataclass(slots=True)
class _Batch:
    seq: int
    last_id: str
    rows: list[bytes]
    count: int
    """Rows (an entry may hold several)."""


class _TrimOrder:
    """Trims follow stream order although batches commit in any order.

    The stream may be trimmed up to a batch only once it and every batch before it have
    committed; otherwise a crash could drop an uncommitted earlier batch from the stream.
    """

    def __init__(self) -> None:
        self._next = 0
        self._done: dict[int, str] = {}

    def committed(self, batch: _Batch) -> str | None:
        """The last id the stream may now be trimmed through (None: not yet)."""
        self._done[batch.seq] = batch.last_id
        upto = None
        while self._next in self._done:
            upto = self._done.pop(self._next)
            self._next += 1
        return upto


@dataclass(slots=True)
class _Sorted:
    groups: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    bad: list[tuple[bytes, str]] = field(default_factory=list)
    """(payload, reason) of entries that cannot be written at all."""


def _check_head(head: bytes) -> tuple[str, str] | str:
    """``table<TAB>columns`` checked against :data:`HISTORY_TABLES`; a reason if it is bad."""
    table_b, _, columns_b = head.partition(b"\t")
    table, columns = table_b.decode(errors="replace"), columns_b.decode(errors="replace")
    spec = HISTORY_TABLES.get(table)
    if spec is None:
        return f"unknown history table {table[:64]!r}"
    names = columns.split(",")
    if any(name not in spec.columns for name in names) or names != sorted(set(names)):
        return f"bad column list for {table}"
    return table, columns


def _sort(rows: list[bytes]) -> _Sorted:
    """Group a batch's rows by (table, columns); set aside the ones that cannot be written.

    Rows are grouped by their raw head first and each distinct head is checked once.
    """
    out = _Sorted()
    by_head: dict[bytes, list[bytes]] = {}
    for row in rows:
        if row[:1] == GROUP_MARK:
            out.bad.append((row[1:], "malformed notification group ('g' field)"))
            continue
        cut = row.find(b"\t", row.find(b"\t") + 1)
        if cut <= 0 or row.startswith(b"!"):
            reason = (
                "entry is not an outbox row (fields other than 'h' and 'g', or a bad 'g')"
                if row.startswith(b"!")
                else "entry payload is not 'table<TAB>columns<TAB>json'"
            )
            out.bad.append((row, reason))
            continue
        head = row[:cut]
        group = by_head.get(head)
        if group is None:
            group = by_head[head] = []
        group.append(row[cut + 1 :])
    for head, group in by_head.items():
        checked = _check_head(head)
        if isinstance(checked, str):
            out.bad.extend((head + b"\t" + body, checked) for body in group)
        else:
            out.groups[checked] = group
    return out


_sql_cache: dict[tuple[str, str, bool], str] = {}


def _insert_sql(table: str, columns: str, on_conflict: bool) -> str:
    """The batch INSERT for one (table, columns) group.

    Both names come from :data:`HISTORY_TABLES` (checked in :func:`_sort`), never from input.
    """
    key = (table, columns, on_conflict)
    sql = _sql_cache.get(key)
    if sql is None:
        sql = (
            f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608 - whitelisted names
            f"FROM json_populate_recordset(NULL::{table}, $1::json)"
            + (" ON CONFLICT DO NOTHING" if on_conflict else "")
        )
        _sql_cache[key] = sql
    return sql


def _inserted(status: str) -> int:
    """Row count from a command tag such as ``INSERT 0 42``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


async def _insert(conn: asyncpg.Connection, table: str, columns: str, rows: list[bytes]) -> int:
    """Insert a group; the number of rows that were new.

    Optimistic: a plain INSERT first (in a savepoint), and ``ON CONFLICT DO NOTHING`` only when
    that meets a row already there. Replays are rare (after a crash), and checking every
    unique index speculatively costs PostgreSQL a fifth more CPU per row than a plain insert.
    """
    payload = (b"[" + b",".join(rows) + b"]").decode()
    try:
        async with conn.transaction():
            status = await conn.execute(
                _insert_sql(table, columns, False), payload, timeout=BATCH_TIMEOUT_S
            )
    except asyncpg.exceptions.UniqueViolationError:
        status = await conn.execute(
            _insert_sql(table, columns, True), payload, timeout=BATCH_TIMEOUT_S
        )
    return _inserted(status)


async def outbox_status(
    handle: StoreHandle,
    counters: OutboxCounters,
    *,
    stream: str = DEFAULT_STREAM,
    now: float | None = None,
    incarnation: int = 0,
) -> OutboxStatus:
    """The outbox's state without asking the writer, which cannot answer while it is
    crash-looping on a PostgreSQL outage (exactly when the backlog matters).

    ``counters`` is the object given to the writer's child spec; ``now`` is wall time.
    """
    pending: int | None = None
    lag: float | None = None
    if handle.redis_up:
        try:
            redis = handle.redis()
            with anyio.fail_after(handle.call_timeout):
                pending = int(await redis.xlen(stream))
                head = await redis.xrange(stream, count=1)
            lag = 0.0
            if head:
                first_ms = int(_text(head[0][0]).split("-")[0])
                lag = max(0.0, (time.time() if now is None else now) - first_ms / 1000)
        except (*_REDIS_DOWN, StoreUnavailable, ValueError):
            pending = lag = None
    return OutboxStatus(
        pending=pending,
        lag_s=None if lag is None else round(lag, 3),
        drained_total=counters.drained,
        inserted_total=counters.inserted,
        duplicates_total=counters.duplicates,
        dead_lettered_total=counters.dead_lettered,
        batches_total=counters.batches,
        last_batch=counters.last_batch,
        incarnation=incarnation,
    )


class OutboxWriter(Actor):
    """Drains the outbox stream into PostgreSQL; crashes when either server is unreachable.

    The supervisor's backoff restart is the retry: while PostgreSQL is down the stream grows,
    and once it is back the next incarnation drains the backlog from the head of the stream.
    """

    mailbox = MailboxSpec(capacity=100)

    def __init__(
        self,
        store: StoreHandle,
        settings: StoreSettings | None = None,
        counters: OutboxCounters | None = None,
        inserters: int = INSERTERS,
    ) -> None:
        if inserters < 1:
            raise ValueError("the outbox writer needs at least one inserter")
        self.inserters = inserters
        self.store = store
        self.settings = settings if settings is not None else StoreSettings()
        self.counters = counters if counters is not None else OutboxCounters()
        self.stream = self.settings.outbox_stream
        self.dead_stream = dead_letter_stream(self.stream)
        self._redis: aioredis.Redis | None = None
        self._pool: asyncpg.Pool | None = None

    async def started(self) -> None:
        self._redis = self.store.redis()
        self._pool = self.store.pool()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._drain)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, OutboxStats):
            return await self._status()
        self.ctx.log.warning("outbox.unexpected_message", message_type=type(message).__name__)
        return None

    async def _status(self) -> OutboxStatus:
        return await outbox_status(
            self.store,
            self.counters,
            stream=self.stream,
            now=self.ctx.clock.wall(),
            incarnation=self.ctx.incarnation,
        )

    # draining

    async def _drain(self) -> None:
        send, receive = anyio.create_memory_object_stream[_Batch](1)
        order = _TrimOrder()
        async with receive, anyio.create_task_group() as tg:
            tg.start_soon(self._read_batches, send)
            for _ in range(self.inserters):
                tg.start_soon(self._write_batches, receive, order)

    async def _write_batches(
        self, receive: anyio.abc.ObjectReceiveStream[_Batch], order: _TrimOrder
    ) -> None:
        async for batch in receive:
            await self._write(batch, order)

    async def _read_batches(self, send: anyio.abc.ObjectSendStream[_Batch]) -> None:
        redis = self._redis
        assert redis is not None
        script = redis.register_script(_READ_SCRIPT)
        limit = self.settings.outbox_batch
        # BLOCK must end well inside the socket timeout, or the wait itself would time out.
        block_ms = max(1, min(self.settings.outbox_block_ms, int(self.settings.call_timeout * 500)))
        linger = self.settings.outbox_linger_ms / 1000
        start = "-"
        position = "0-0"
        seq = 0
        async with send:
            while True:
                rows: list[bytes] = []
                last = ""
                while len(rows) < limit:
                    chunk = min(READ_CHUNK, limit - len(rows))
                    with anyio.fail_after(self.settings.call_timeout):
                        got_last, got, data, more = await script(
                            keys=[self.stream], args=[start, chunk]
                        )
                    if not got:
                        break
                    last = got_last.decode()
                    rows.extend(expand_groups(data.split(b"\n")))
                    start = next_id(last)
                    if not int(more):
                        break
                if rows:
                    position = last
                    await send.send(_Batch(seq, last, rows, len(rows)))
                    seq += 1
                    if len(rows) < limit and linger:
                        await anyio.sleep(linger)
                else:
                    # Nothing to do: wait (inside Redis) for the next entry after our position.
                    await redis.xread({self.stream: position}, count=1, block=block_ms)

    async def _write(self, batch: _Batch, order: _TrimOrder) -> None:
        pool, redis = self._pool, self._redis
        assert pool is not None and redis is not None
        sorted_rows = _sort(batch.rows)
        inserted = 0
        refused: list[tuple[bytes, str]] = list(sorted_rows.bad)
        timeout = self.settings.call_timeout
        async with pool.acquire(timeout=timeout) as conn:
            try:
                async with conn.transaction():
                    for (table, columns), rows in sorted_rows.groups.items():
                        inserted += await _insert(conn, table, columns, rows)
            except _ROW_ERRORS as exc:
                self.ctx.log.warning("outbox.batch_refused", error=describe(exc), rows=batch.count)
                inserted, bad = await self._write_one_by_one(conn, sorted_rows)
                refused.extend(bad)
        if refused:
            await self._dead_letter(redis, refused)
        # Count at commit: a crash during the trim below must not lose the tally of rows
        # that are in PostgreSQL (a replay counts them again, as duplicates).
        c = self.counters
        written = batch.count - len(refused)
        c.drained += written
        c.inserted += inserted
        c.duplicates += written - inserted
        c.dead_lettered += len(refused)
        c.batches += 1
        c.last_batch = batch.count
        upto = order.committed(batch)
        if upto is not None:
            with anyio.fail_after(timeout):
                await redis.xtrim(self.stream, minid=next_id(upto), approximate=False)

    async def _write_one_by_one(
        self, conn: asyncpg.Connection, sorted_rows: _Sorted
    ) -> tuple[int, list[tuple[bytes, str]]]:
        """Slow path for a batch PostgreSQL refused: each row in its own savepoint."""
        inserted = 0
        bad: list[tuple[bytes, str]] = []
        async with conn.transaction():
            for (table, columns), rows in sorted_rows.groups.items():
                for row in rows:
                    try:
                        async with conn.transaction():
                            inserted += await _insert(conn, table, columns, [row])
                    except _ROW_ERRORS as exc:
                        head = f"{table}\t{columns}\t".encode()
                        bad.append((head + row, describe(exc)))
        return inserted, bad

    async def _dead_letter(self, redis: aioredis.Redis, refused: list[tuple[bytes, str]]) -> None:
        """Park refused rows (with the reason) in the dead-letter stream for a person to see."""
        foreign = [p[1:].decode(errors="replace") for p, _ in refused if p.startswith(b"!")]
        with anyio.fail_after(self.settings.call_timeout + len(refused) / 1_000):
            raw: dict[str, dict[Any, Any]] = {}
            if foreign:
                # Not our format: keep the raw fields of the original entries.
                pipe = redis.pipeline(transaction=False)
                for entry_id in foreign:
                    pipe.xrange(self.stream, entry_id, entry_id)
                for entry_id, found in zip(foreign, await pipe.execute(), strict=True):
                    raw[entry_id] = (found[0][1] or {}) if found else {}
            pipe = redis.pipeline(transaction=False)
            for payload, reason in refused:
                entry: dict[FieldT, EncodableT] = {"h": payload, "reason": reason}
                fields = (
                    raw.get(payload[1:].decode(errors="replace")) if payload[:1] == b"!" else None
                )
                if fields is not None:
                    entry["raw"] = _encoder.encode({_text(k): _text(v) for k, v in fields.items()})
                pipe.xadd(self.dead_stream, entry, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
            await pipe.execute()
        for payload, reason in refused[:5]:
            self.ctx.log.error("outbox.dead_letter", reason=reason, row=payload[:200])
        if len(refused) > 5:
            self.ctx.log.error("outbox.dead_letter_more", count=len(refused) - 5)
