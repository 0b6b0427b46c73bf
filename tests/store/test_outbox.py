"""The history outbox: validation, draining, idempotent replay, dead letters, stats."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.store.handle import StoreHandle
from actors.store.outbox import (
    GROUP_MARK,
    HISTORY_TABLES,
    HistoryRejected,
    Kind,
    NotificationRows,
    OutboxCounters,
    OutboxStats,
    OutboxStatus,
    _Batch,
    _sort,
    _TrimOrder,
    append_history,
    append_history_many,
    dead_letter_stream,
    encode_history,
    expand_groups,
    next_id,
)
from tests.helpers import eventually
from tests.store.support import activity, fast_settings, fetch, running_store, settled

pytestmark = pytest.mark.anyio

WHEN = datetime(2025, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
AWKWARD = "tab\t nl\n 'q' \"d\" \\ \u2603 \U0001f680"
"""Every character JSON and our tab-separated framing must get right (under 64: a CHECK)."""


XADD_FIELDS = "return redis.call('XADD', KEYS[1], '*', unpack(ARGV))"
"""One stream entry with the fields given as arguments (an "h" or "g" field repeated, as the
notify gate appends them; redis-py's xadd takes a mapping, which cannot repeat a field)."""


def notification(key: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "dedup_key": key,
        "chat_id": 10_000 + n,
        "token_key": f"solana:Tok{n}AbC",
        "kind": "call",
        "fdv": 123_456.5,
    }
    row.update(extra)
    return row


def call(key: str, n: int = 0) -> dict[str, Any]:
    return {
        "dedup_key": key,
        "event_id": f"ev{n}",
        "channel_id": f"ch{n}",
        "token_key": f"solana:Call{n}XyZ",
        "chain": "solana",
        "called_at": WHEN,
        "fdv_at_call": Decimal("98765.4321"),
    }


def change(key: str, n: int = 0) -> dict[str, Any]:
    return {"dedup_key": key, "chat_id": 500 + n, "after": {"fdv_min": n, "chains": ["solana"]}}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("table", "row", "reason"),
    [
        ("users", {"dedup_key": "k"}, "not a history table"),
        ("activity_log", ["not", "a", "mapping"], "mapping"),
        ("activity_log", {"actor_kind": "user", "action": "x"}, "dedup_key"),
        ("activity_log", {"dedup_key": "", "actor_kind": "user", "action": "x"}, "dedup_key"),
        (
            "activity_log",
            {"dedup_key": "k" * 201, "actor_kind": "user", "action": "x"},
            "dedup_key",
        ),
        ("activity_log", {"dedup_key": "k", "actor_kind": "user"}, "missing required"),
        ("activity_log", {"dedup_key": "k", "actor_kind": "user", "action": None}, "not be null"),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "user", "action": "x", "id": 1},
            "unknown",
        ),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "actor_id": "1"},
            "integer",
        ),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "actor_id": True},
            "integer",
        ),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "actor_id": 2**63},
            "range",
        ),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "detail": [1]},
            "dict",
        ),
        ("activity_log", {"dedup_key": "k", "actor_kind": "u", "action": "a\x00b"}, "NUL"),
        ("activity_log", {"dedup_key": "k", "actor_kind": "u", "action": "\ud800"}, "Unicode"),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "at": "2025-01-01"},
            "datetime",
        ),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "at": datetime(2025, 1, 1)},
            "time zone",
        ),
        ("notifications", notification("k", threshold=2**31), "range"),
        ("notifications", notification("k", fdv=math.nan), "finite"),
        ("notifications", notification("k", fdv=Decimal("Infinity")), "finite"),
        ("notifications", notification("k", fdv="12"), "number"),
        (
            "activity_log",
            {"dedup_key": "k", "actor_kind": "u", "action": "x", "detail": {"a": object()}},
            "JSON",
        ),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(table: str, row: Any, reason: str) -> None:
    with pytest.raises(HistoryRejected, match=reason):
        encode_history(table, row)


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
_ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=7))]
)


def _value_for(kind: Kind) -> st.SearchStrategy[Any]:
    return {
        Kind.TEXT: _TEXT.filter(bool),
        Kind.BIGINT: st.integers(-(2**63), 2**63 - 1),
        Kind.INT: st.integers(-(2**31), 2**31 - 1),
        Kind.NUMERIC: st.integers(0, 10**15)
        | st.floats(0, 1e15)
        | st.builds(lambda n: Decimal(n).scaleb(-4), st.integers(0, 10**12)),
        Kind.TIMESTAMP: st.builds(
            lambda s, tz: (WHEN + timedelta(seconds=s)).astimezone(tz),
            st.integers(-(10**9), 10**9),
            _ZONES,
        ),
        Kind.OBJECT: st.dictionaries(_TEXT, st.integers() | _TEXT, max_size=3),
    }[kind]


@st.composite
def _valid_rows(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    table = draw(st.sampled_from(sorted(HISTORY_TABLES)))
    spec = HISTORY_TABLES[table]
    row: dict[str, Any] = {}
    for column, kind in spec.columns.items():
        if column in spec.required or draw(st.booleans()):
            row[column] = draw(_value_for(kind))
    return table, row


_ODD_VALUES = (
    st.sampled_from(
        [
            None,
            True,
            0,
            -1,
            2**63,
            2**31,
            1.5,
            math.nan,
            -math.inf,
            Decimal("NaN"),
            Decimal("1.25"),
            "",
            "x" * 201,
            "a\x00b",
            "\ud800",
            b"bytes",
            datetime(2025, 1, 1),
            WHEN,
            {"k": 1},
            {"k": object()},
            [1, 2],
            {1, 2},
            object(),
        ]
    )
    | st.integers()
    | _TEXT
)
_COLUMNS = st.sampled_from(
    sorted({c for spec in HISTORY_TABLES.values() for c in spec.columns} | {"id", "x", ""})
)
_MUTATIONS = st.lists(
    st.tuples(st.sampled_from(["set", "drop"]), _COLUMNS, _ODD_VALUES), max_size=3
)


@settings(max_examples=200, deadline=None)
@given(
    item=_valid_rows(),
    mutations=_MUTATIONS,
    table=st.none() | st.sampled_from([*HISTORY_TABLES, "users", "", "payments"]),
    not_a_row=st.booleans(),
)
def test_mutated_rows_never_raise_anything_but_history_rejected(
    item: tuple[str, dict[str, Any]],
    mutations: list[tuple[str, str, Any]],
    table: str | None,
    not_a_row: bool,
) -> None:
    """Start from a valid row, break it at random: a row is accepted or refused with a
    reason, and an accepted one is always writable."""
    own_table, row = item
    for action, column, value in mutations:
        if action == "set":
            row[column] = value
        else:
            row.pop(column, None)
    target = table if table is not None else own_table
    try:
        payload = encode_history(target, [row] if not_a_row else row)  # type: ignore[arg-type]
    except HistoryRejected as exc:
        assert exc.reason
        return
    assert not not_a_row
    assert not _sort([payload]).bad


@settings(max_examples=100, deadline=None)
@given(_valid_rows())
def test_valid_rows_encode_to_one_writable_entry(item: tuple[str, dict[str, Any]]) -> None:
    table, row = item
    payload = encode_history(table, row)
    assert b"\n" not in payload
    sorted_rows = _sort([payload])
    assert not sorted_rows.bad
    ((key, rows),) = sorted_rows.groups.items()
    assert key == (table, ",".join(sorted(row)))
    decoded = msgspec.json.decode(rows[0])
    assert decoded["dedup_key"] == row["dedup_key"]
    assert set(decoded) == set(row)


@given(
    chat_ids=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=3),
    token=st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=3, max_size=80),
    fdv=st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    sent_at=st.datetimes(timezones=st.just(UTC)),
)
def test_the_gates_notification_rows_encode_as_checked_rows_do(
    chat_ids: list[int], token: str, fdv: float, sent_at: datetime
) -> None:
    rows = NotificationRows(token, fdv, sent_at)
    for chat_id in chat_ids:
        checked = {
            "chat_id": chat_id,
            "dedup_key": f"call:{token}:{chat_id}",
            "fdv": fdv,
            "kind": "call",
            "sent_at": sent_at,
            "threshold": 0,
            "token_key": token,
        }
        assert rows.row(chat_id) == encode_history("notifications", checked)
    assert all(
        b"\n" not in part and b"\x1f" not in part
        for part in (rows.before, rows.between, rows.after)
    )


def test_next_id() -> None:
    assert next_id("1700000000000-0") == "1700000000000-1"
    assert next_id(f"5-{2**64 - 1}") == "6-0"


async def test_history_tables_match_the_schema(database_url: str) -> None:
    rows = await fetch(
        database_url,
        "SELECT table_name, column_name, is_nullable, column_default, data_type, is_identity "
        "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ANY($1)",
        list(HISTORY_TABLES),
    )
    kinds = {
        "text": Kind.TEXT,
        "bigint": Kind.BIGINT,
        "integer": Kind.INT,
        "numeric": Kind.NUMERIC,
        "timestamp with time zone": Kind.TIMESTAMP,
        "jsonb": Kind.OBJECT,
    }
    for table, spec in HISTORY_TABLES.items():
        columns = {
            r["column_name"]: r
            for r in rows
            if r["table_name"] == table and r["is_identity"] == "NO"
        }
        assert {c: kinds[r["data_type"]] for c, r in columns.items()} == dict(spec.columns), table
        required = {
            c
            for c, r in columns.items()
            if r["is_nullable"] == "NO" and r["column_default"] is None
        }
        assert required == spec.required, table


# --------------------------------------------------------------------------- draining


async def test_writer_drains_every_table_exactly_and_trims_the_stream(
    redis_url: str, database_url: str
) -> None:
    settings_ = fast_settings(outbox_batch=700)
    stream = settings_.outbox_stream
    handle = StoreHandle(redis_url, database_url, settings_.call_timeout)
    rows: list[tuple[str, dict[str, Any]]] = [
        *(("activity_log", activity(f"a:{i}", i)) for i in range(1_500)),
        *(("notifications", notification(f"n:{i}", i)) for i in range(400)),
        *(("calls_history", call(f"c:{i}", i)) for i in range(400)),
        *(("settings_changes", change(f"s:{i}", i)) for i in range(300)),
    ]
    special = {
        "dedup_key": "awkward",
        "actor_kind": "admin",
        "actor_id": -(2**63),
        "action": AWKWARD,
        "subject_id": 2**63 - 1,
        "detail": {"nested": {"list": [1, 2.5, None, AWKWARD]}},
        "at": datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=-7))),
    }
    counters = OutboxCounters()
    async with running_store(handle, settings_, counters=counters) as tree:
        ids = await append_history_many(handle, rows, stream=stream)
        ids.append(await append_history(handle, "activity_log", special, stream=stream))
        assert len(set(ids)) == len(rows) + 1
        await settled(handle, counters, stream, len(rows) + 1)
        status = await tree.lookup("store/outbox").ask(OutboxStats())
        assert isinstance(status, OutboxStatus)
        assert status.pending == 0 and status.lag_s == 0.0
        assert status.drained_total == status.inserted_total == len(rows) + 1
        assert status.duplicates_total == status.dead_lettered_total == 0
        assert 0 < status.last_batch <= 700
        assert await handle.redis().xlen(stream) == 0

        # Replay everything: nothing is inserted twice.
        await append_history_many(handle, rows, stream=stream)
        await settled(handle, counters, stream, 2 * len(rows) + 1)
        assert counters.duplicates == len(rows)
        assert counters.inserted == len(rows) + 1

    counts = {
        r["t"]: r["n"]
        for r in await fetch(
            database_url,
            "SELECT 'activity_log' AS t, count(*) AS n FROM activity_log UNION ALL "
            "SELECT 'notifications', count(*) FROM notifications UNION ALL "
            "SELECT 'calls_history', count(*) FROM calls_history UNION ALL "
            "SELECT 'settings_changes', count(*) FROM settings_changes",
        )
    }
    assert counts == {
        "activity_log": 1_501,
        "notifications": 400,
        "calls_history": 400,
        "settings_changes": 300,
    }
    (got,) = await fetch(database_url, "SELECT * FROM activity_log WHERE dedup_key = 'awkward'")
    assert got["action"] == AWKWARD
    assert (got["actor_id"], got["subject_id"]) == (-(2**63), 2**63 - 1)
    assert msgspec.json.decode(got["detail"]) == special["detail"]
    assert got["at"] == special["at"]
    (c,) = await fetch(database_url, "SELECT * FROM calls_history WHERE dedup_key = 'c:7'")
    assert c["called_at"] == WHEN and c["fdv_at_call"] == Decimal("98765.4321")
    (n,) = await fetch(database_url, "SELECT * FROM notifications WHERE dedup_key = 'n:7'")
    assert n["fdv"] == Decimal("123456.5") and n["threshold"] == 0  # column default applied


async def test_rows_postgres_refuses_are_dead_lettered_and_the_rest_is_written(
    redis_url: str, database_url: str
) -> None:
    settings_ = fast_settings()
    stream = settings_.outbox_stream
    handle = StoreHandle(redis_url, database_url, settings_.call_timeout)
    counters = OutboxCounters()
    async with running_store(handle, settings_, counters=counters) as tree:
        redis = handle.redis()
        # All of it lands in the stream before the writer looks: one batch, good and bad mixed.
        pipe = redis.pipeline(transaction=True)
        good = [encode_history("activity_log", activity(f"ok:{i}", i)) for i in range(10)]
        for payload in good[:5]:
            pipe.xadd(stream, {"h": payload})
        # Pass producer-side validation, refused by a CHECK constraint:
        pipe.xadd(stream, {"h": encode_history("notifications", notification("bad1", kind="nope"))})
        pipe.xadd(
            stream,
            {"h": encode_history("notifications", notification("bad2", kind="multiplier"))},
        )
        pipe.xadd(stream, {"foreign": "entry", "other": "field"})
        pipe.xadd(stream, {"h": b'users\tdedup_key\t{"dedup_key": "x"}'})
        pipe.xadd(stream, {"h": b"activity_log\tid,dedup_key\t{}"})
        pipe.xadd(stream, {"h": b"garbage"})
        for payload in good[5:8]:
            pipe.xadd(stream, {"h": payload})
        # Several rows in one entry (the notify gate's batches), then "h" beside another field.
        pipe.eval(
            XADD_FIELDS,
            1,
            stream,
            *("h", good[8], "h", good[9]),
        )
        pipe.eval(
            XADD_FIELDS,
            1,
            stream,
            *("h", encode_history("activity_log", activity("mixed", 99)), "x", "y"),
        )
        await pipe.execute()

        await eventually(lambda: counters.drained + counters.dead_lettered >= 17, timeout=10)
        assert counters.drained == 10 and counters.dead_lettered == 7
        assert await redis.xlen(stream) == 0
        dead = await redis.xrange(dead_letter_stream(stream))
        reasons = [fields[b"reason"].decode() for _, fields in dead]
        assert sum("CheckViolation" in r for r in reasons) == 2
        assert any("not an outbox row" in r for r in reasons)
        assert any("unknown history table" in r for r in reasons)
        assert any("bad column list" in r for r in reasons)
        assert any("TAB" in r for r in reasons)
        foreign = next(f for _, f in dead if b"raw" in f)
        assert msgspec.json.decode(foreign[b"raw"]) == {"foreign": "entry", "other": "field"}
        assert tree.status().children[2].restarts_total == 0  # refused rows never crash it

    rows = await fetch(database_url, "SELECT dedup_key FROM activity_log ORDER BY dedup_key")
    assert [r["dedup_key"] for r in rows] == sorted(f"ok:{i}" for i in range(10))
    assert not await fetch(database_url, "SELECT 1 FROM notifications")


async def test_a_backlog_partly_written_before_is_drained_once(
    redis_url: str, database_url: str
) -> None:
    """The stream is the backlog: a new writer (a restart, a new process) starts at its head,
    and rows a previous writer committed but did not trim are not inserted twice."""
    settings_ = fast_settings(outbox_batch=1_000)
    handle = StoreHandle(redis_url, database_url, settings_.call_timeout)
    rows = [("activity_log", activity(f"b:{i}", i)) for i in range(3_000)]
    counters = OutboxCounters()
    async with running_store(handle, settings_, counters=counters) as tree:
        await handle.pool().execute(
            "INSERT INTO activity_log (dedup_key, actor_kind, action) "
            "SELECT 'b:' || g, 'system', 'test' FROM generate_series(0, 999) AS g"
        )
        await append_history_many(handle, rows, stream=settings_.outbox_stream)
        await settled(handle, counters, settings_.outbox_stream, 3_000)
        status = await tree.lookup("store/outbox").ask(OutboxStats())
        assert status.drained_total == 3_000 and status.pending == 0
        assert status.duplicates_total == 1_000 and status.inserted_total == 2_000
    (row,) = await fetch(database_url, "SELECT count(*) AS n FROM activity_log")
    assert row["n"] == 3_000


def test_trims_follow_stream_order_whatever_order_batches_commit_in() -> None:
    order = _TrimOrder()
    batches = [_Batch(seq, f"{seq}-0", [], 0) for seq in range(4)]
    assert order.committed(batches[1]) is None  # batch 0 still in flight
    assert order.committed(batches[2]) is None
    assert order.committed(batches[0]) == "2-0"  # 0, 1 and 2 are all in
    assert order.committed(batches[3]) == "3-0"


async def test_batches_of_many_rows_per_entry_keep_to_the_batch_size(
    redis_url: str, database_url: str
) -> None:
    settings_ = fast_settings(outbox_batch=500)
    stream = settings_.outbox_stream
    handle = StoreHandle(redis_url, database_url, settings_.call_timeout)
    counters = OutboxCounters()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for entry in range(10):  # ten entries of 300 rows, as the notify gate appends them
            fields: list[bytes | str] = []
            for i in range(300):
                fields += ["h", encode_history("activity_log", activity(f"m:{entry}:{i}", i))]
            await redis.eval(XADD_FIELDS, 1, stream, *fields)
    finally:
        await redis.aclose()
    async with running_store(handle, settings_, counters=counters):
        await eventually(lambda: counters.drained >= 3_000, timeout=10)
        # at most one entry past the batch size: 600 rows a batch here
        assert counters.dead_lettered == 0 and counters.batches >= 5
        assert await handle.redis().xlen(stream) == 0
    rows = await fetch(database_url, "SELECT count(*) AS n FROM activity_log")
    assert rows[0]["n"] == 3_000


def group(rows: NotificationRows, ids: list[int], count: int | None = None) -> bytes:
    """The ``g`` field the notify gate's claim script writes for one event."""
    joined = b",".join(str(i).encode() for i in ids)
    head = str(len(ids) if count is None else count).encode()
    return b"\x1f".join((head, rows.before, rows.between, rows.after, joined))


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=5),
    cut=st.integers(0, 400),
    junk=st.binary(max_size=20),
)
def test_groups_expand_to_the_gates_rows_and_damage_is_set_aside(
    ids: list[int], cut: int, junk: bytes
) -> None:
    rows = NotificationRows("solana:Tok", 1e6, datetime(2026, 1, 1, tzinfo=UTC))
    whole = group(rows, ids)
    assert expand_groups([GROUP_MARK + whole]) == [rows.row(i) for i in ids]
    damaged = GROUP_MARK + whole[:cut] + junk
    out = expand_groups([b"keep", damaged])  # never raises; a row or the group as it was
    assert out[0] == b"keep"
    if out[1:] == [damaged]:
        bad = _sort([damaged]).bad
        assert bad and "malformed notification group" in bad[0][1]
    else:
        assert all(row.startswith(NotificationRows._HEAD) for row in out[1:])


async def test_groups_drain_into_rows_and_a_malformed_one_is_dead_lettered(
    redis_url: str, database_url: str
) -> None:
    """The notify gate's entries: a group of rows per event, several groups per entry."""
    settings_ = fast_settings(outbox_batch=50)
    stream = settings_.outbox_stream
    handle = StoreHandle(redis_url, database_url, settings_.call_timeout)
    counters = OutboxCounters()
    sent_at = datetime(2026, 1, 1, tzinfo=UTC)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        for entry in range(4):  # 4 entries x 3 groups x 10 rows: past the batch size
            fields: list[bytes | str] = []
            for token in range(3):
                rows = NotificationRows(f"solana:G{entry}x{token}", 5e5, sent_at)
                fields += ["g", group(rows, list(range(1, 11)))]
            await redis.eval(XADD_FIELDS, 1, stream, *fields)
        broken = NotificationRows("solana:Broken", 5e5, sent_at)
        await redis.xadd(stream, {"g": group(broken, [1, 2])[:-2] + b",,x"})
        await redis.xadd(stream, {"g": b"not a count\x1fat all"})
    finally:
        await redis.aclose()
    async with running_store(handle, settings_, counters=counters):
        await eventually(lambda: counters.drained + counters.dead_lettered >= 122, timeout=10)
        assert counters.drained == 120 and counters.dead_lettered == 2
        assert await handle.redis().xlen(stream) == 0
        dead = await handle.redis().xrange(dead_letter_stream(stream))
    reasons = sorted(fields[b"reason"].decode() for _, fields in dead)
    assert "not an outbox row" in reasons[0]  # no count: the read script refuses the entry
    assert "malformed notification group" in reasons[1]
    (row,) = await fetch(
        database_url, "SELECT count(*) AS n, count(DISTINCT token_key) AS t FROM notifications"
    )
    assert (row["n"], row["t"]) == (120, 12)
