"""Store benchmark: history outbox drain into PostgreSQL, and Redis round trips.

With no ``CALLWATCH_REDIS_URL`` / ``CALLWATCH_DATABASE_URL``, embedded servers are started in a
temporary folder with the production settings (Redis ``appendfsync always``, PostgreSQL
``fsync on``). With URLs set, those servers are used: the bench writes to a stream of its
own and removes its rows afterwards (by their ``dedup_key`` prefix).

1. ``--rows`` history rows (a mix of the four history tables, like production's) are appended
   to the outbox with ``append_history_many`` while no writer runs (append rate reported).
2. The outbox writer (the real actor, default settings) starts; the time until every row is
   committed in PostgreSQL gives ``outbox_rows_per_s``.
3. Redis round trip: ``PING`` through the owner's client, p50 and p99.

``--compare`` also times the PostgreSQL-side alternatives on the same rows (one connection,
batches of ``outbox_batch``, wall time and server CPU per row): what the writer does
(``json_populate_recordset``, plain INSERT, ``ON CONFLICT DO NOTHING`` only on a replay), the
same with ``ON CONFLICT`` always, ``COPY`` into a temporary table + ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING``, and ``executemany``.

Run: ``python bench/store.py`` (``--rows 20000`` for a smoke test). Last line:
``store: outbox_rows_per_s=... redis_rtt_p50_us=...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name shadows the
# ``runtime`` package: drop the folder (``python -m bench.store`` needs no fix).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from decimal import Decimal  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import asyncpg  # noqa: E402
import msgspec  # noqa: E402
import psutil  # type: ignore[import-untyped]  # noqa: E402

from actors.store.handle import StoreHandle  # noqa: E402
from actors.store.outbox import (  # noqa: E402
    HISTORY_TABLES,
    INSERTERS,
    OutboxCounters,
    OutboxWriter,
    _insert,
    _sort,
    append_history_many,
    encode_history,
)
from actors.store.postgres_owner import PostgresOwner  # noqa: E402
from actors.store.redis_owner import RedisOwner  # noqa: E402
from messages.settings import StoreSettings  # noqa: E402
from runtime import ActorSystem  # noqa: E402
from runtime.logs import configure_logging  # noqa: E402
from runtime.servers import DATABASE_URL_ENV, REDIS_URL_ENV, EmbeddedServers  # noqa: E402
from supervisors import Tree, supervisor, worker  # noqa: E402

MIX = (("notifications", 4), ("calls_history", 3), ("activity_log", 2), ("settings_changes", 1))
"""Relative shares of the history tables in the generated rows."""


def make_rows(n: int, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """``n`` rows shaped like production's: 5,000 users, 300 channels, ten users per token."""
    start = datetime(2025, 6, 1, tzinfo=UTC)
    plan = [table for table, share in MIX for _ in range(share)]
    rows: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        table = plan[i % len(plan)]
        key = f"{prefix}{i}"
        token = f"solana:{i // 10:032x}pump"  # ten users told of each token
        at = start + timedelta(seconds=i)
        row: dict[str, Any]
        if table == "notifications":
            row = {
                "dedup_key": key,
                "chat_id": 100_000 + i % 5_000,
                "token_key": token,
                "kind": "call" if i % 3 else "multiplier",
                "threshold": 0 if i % 3 else 2,
                "fdv": 250_000 + i,
                "message_id": i,
                "sent_at": at,
            }
        elif table == "calls_history":
            row = {
                "dedup_key": key,
                "event_id": f"ev-{i}",
                "channel_id": f"{-1_000_000_000 - i % 300}",
                "channel_username": f"alpha_calls_{i % 300}",
                "token_key": f"{token}{i}",
                "chain": "solana",
                "symbol": "PUMP",
                "called_at": at,
                "fdv_at_call": Decimal("123456.78"),
            }
        elif table == "activity_log":
            row = {
                "dedup_key": key,
                "actor_kind": "user",
                "actor_id": 100_000 + i % 5_000,
                "action": "settings.update",
                "detail": {"field": "fdv_min", "value": i},
                "at": at,
            }
        else:
            row = {
                "dedup_key": key,
                "chat_id": 100_000 + i % 5_000,
                "changed_by": 100_000 + i % 5_000,
                "before": {"fdv_min": i - 1},
                "after": {"fdv_min": i},
                "changed_at": at,
            }
        rows.append((table, row))
    return rows


async def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - polling a counter, a bench
            await anyio.sleep(0.005)


async def redis_rtt(handle: StoreHandle, samples: int) -> list[float]:
    client = handle.redis()
    for _ in range(200):
        await client.ping()
    out: list[float] = []
    for _ in range(samples):
        began = time.perf_counter()
        await client.ping()
        out.append(time.perf_counter() - began)
    return out


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


# ---------------------------------------------------------------- PostgreSQL-side alternatives


async def _writer_batch(
    conn: asyncpg.Connection, groups: dict[tuple[str, str], list[bytes]]
) -> None:
    """What the outbox writer does: JSON array, plain INSERT, ON CONFLICT only on a replay."""
    async with conn.transaction():
        for (table, columns), rows in groups.items():
            await _insert(conn, table, columns, rows)


async def _json_conflict_batch(
    conn: asyncpg.Connection, groups: dict[tuple[str, str], list[bytes]]
) -> None:
    async with conn.transaction():
        for (table, columns), rows in groups.items():
            payload = (b"[" + b",".join(rows) + b"]").decode()
            await conn.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} "  # noqa: S608 - constant column list; values are parameters
                f"FROM json_populate_recordset(NULL::{table}, $1::json) ON CONFLICT DO NOTHING",
                payload,
            )


_PG_TYPES = {
    "text": "text",
    "bigint": "bigint",
    "integer": "integer",
    "numeric": "numeric",
    "timestamptz": "timestamptz",
    "jsonb object": "jsonb",
}


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return str(value)


async def _copy_batch(conn: asyncpg.Connection, groups: dict[tuple[str, str], list[bytes]]) -> None:
    """COPY the decoded rows as text into a temporary table, cast while inserting."""
    async with conn.transaction():
        for (table, columns), rows in groups.items():
            names = columns.split(",")
            spec = HISTORY_TABLES[table].columns
            temp = f"tmp_{table}"
            await conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {temp} "
                f"({', '.join(f'{c} text' for c in spec)}) ON COMMIT DELETE ROWS"
            )
            records = []
            for raw in rows:
                decoded = msgspec.json.decode(raw)
                records.append(tuple(_as_text(decoded.get(c)) for c in names))
            await conn.copy_records_to_table(temp, records=records, columns=names)
            casts = ", ".join(f"{c}::{_PG_TYPES[spec[c].value]}" for c in names)
            await conn.execute(
                f"INSERT INTO {table} ({columns}) SELECT {casts} FROM {temp} "  # noqa: S608 - constant column list; values are parameters
                "ON CONFLICT DO NOTHING"
            )


async def _executemany_batch(
    conn: asyncpg.Connection, groups: dict[tuple[str, str], list[bytes]]
) -> None:
    async with conn.transaction():
        for (table, columns), rows in groups.items():
            names = columns.split(",")
            spec = HISTORY_TABLES[table].columns
            params = ", ".join(
                f"${i}::text::{_PG_TYPES[spec[c].value]}" for i, c in enumerate(names, 1)
            )
            records = []
            for raw in rows:
                decoded = msgspec.json.decode(raw)
                records.append(tuple(_as_text(decoded.get(c)) for c in names))
            await conn.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({params}) "  # noqa: S608 - constant column list; values are parameters
                "ON CONFLICT DO NOTHING",
                records,
            )


Strategy = Callable[[asyncpg.Connection, dict[tuple[str, str], list[bytes]]], Awaitable[None]]


async def compare(
    url: str, rows: list[tuple[str, dict[str, Any]]], batch: int, meter: CpuMeter
) -> dict[str, tuple[float, float | None]]:
    """name -> (rows/s, PostgreSQL CPU microseconds per row or None for an external server)."""
    results: dict[str, tuple[float, float | None]] = {}
    strategies: dict[str, Strategy] = {
        "writer (json, optimistic)": _writer_batch,
        "json + always on conflict": _json_conflict_batch,
        "copy_temp_insert": _copy_batch,
        "executemany": _executemany_batch,
    }
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for name, strategy in strategies.items():
            prefix = f"cmp:{name}:{uuid.uuid4().hex[:8]}:"
            payloads = [
                encode_history(t, {**r, "dedup_key": prefix + r["dedup_key"]}) for t, r in rows
            ]
            began, cpu = time.perf_counter(), meter.sample().get("postgres")
            for start in range(0, len(payloads), batch):
                await strategy(conn, _sort(payloads[start : start + batch]).groups)
            rate = len(payloads) / (time.perf_counter() - began)
            after = meter.sample().get("postgres")
            per_row = None if cpu is None or after is None else (after - cpu) / len(rows) * 1e6
            results[name] = (rate, per_row)
            await _cleanup(conn, prefix)
    finally:
        await conn.close()
    return results


async def _cleanup(conn: asyncpg.Connection, prefix: str) -> None:
    for table in HISTORY_TABLES:
        await conn.execute(
            f"DELETE FROM {table} WHERE dedup_key LIKE $1",  # noqa: S608 - constant column list; values are parameters
            prefix.replace("%", r"\%").replace("_", r"\_") + "%",
        )


# ---------------------------------------------------------------- the run


class CpuMeter:
    """CPU seconds used by this process and by the embedded servers (with their children).

    On a shared machine wall-clock rates swing with the neighbours' load; CPU per row does
    not, and gives a ceiling for an idle machine.
    """

    def __init__(self, server_pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in server_pids.items() if pid is not None}

    def sample(self) -> dict[str, float]:
        out = {"python": sum(psutil.Process().cpu_times()[:2])}
        for name, pid in self.pids.items():
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            total = 0.0
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    total += sum(proc.cpu_times()[:2])
            out[name] = total
        return out


def idle_estimate(cpu_per_row: dict[str, float], inserters: int) -> float:
    """Rows/s if only CPU limited: no part faster than its own threads allow, and all
    parts together no faster than the machine's cores allow."""
    cores = os.cpu_count() or 1
    bottleneck = max(
        sum(cpu_per_row.values()) / cores,
        cpu_per_row.get("python", 0.0),
        cpu_per_row.get("redis", 0.0),
        cpu_per_row.get("postgres", 0.0) / min(inserters, cores),
    )
    return 1 / bottleneck if bottleneck > 0 else 0.0


async def run(args: argparse.Namespace, redis_url: str, database_url: str, meter: CpuMeter) -> None:
    run_id = uuid.uuid4().hex[:8]
    settings = StoreSettings(outbox_stream=f"bench:outbox:{run_id}", outbox_batch=args.batch)
    handle = StoreHandle(redis_url, database_url, settings.call_timeout)
    prefix = f"bench:{run_id}:"
    rows = make_rows(args.rows, prefix)
    owners = supervisor(
        "owners",
        [
            worker("redis", RedisOwner, store=handle, settings=settings),
            worker("postgres", PostgresOwner, store=handle, settings=settings),
        ],
    )
    async with Tree(owners, ActorSystem()).running():
        began = time.perf_counter()
        for start in range(0, len(rows), 10_000):
            await append_history_many(
                handle, rows[start : start + 10_000], stream=settings.outbox_stream
            )
        append_s = time.perf_counter() - began
        print(
            f"appended {len(rows):,} rows in {append_s:.2f} s: {len(rows) / append_s:,.0f} rows/s"
        )

        counters = OutboxCounters()
        writer = worker(
            "outbox",
            OutboxWriter,
            store=handle,
            settings=settings,
            counters=counters,
            inserters=args.inserters,
        )
        began, cpu_before = time.perf_counter(), meter.sample()
        async with Tree(supervisor("drain", [writer]), ActorSystem()).running():
            await wait_until(lambda: counters.drained >= len(rows), timeout=600)
            drain_s = time.perf_counter() - began
        cpu_after = meter.sample()
        drain_rate = len(rows) / drain_s
        cpu_per_row = {k: (cpu_after[k] - cpu_before[k]) / len(rows) for k in cpu_before}
        print(
            f"drained {counters.drained:,} rows in {drain_s:.2f} s: {drain_rate:,.0f} rows/s "
            f"({counters.batches} batches, {counters.inserted:,} inserted, "
            f"{counters.duplicates} duplicates, {counters.dead_lettered} dead letters)"
        )
        assert counters.inserted == len(rows), "rows went missing"
        estimate = idle_estimate(cpu_per_row, args.inserters)
        if len(cpu_per_row) > 1:
            parts = ", ".join(f"{k} {v * 1e6:.1f}" for k, v in cpu_per_row.items())
            print(
                f"CPU per drained row (us): {parts}; CPU-bound ceiling on this machine's "
                f"{os.cpu_count()} cores if idle: {estimate:,.0f} rows/s "
                f"(load average now {os.getloadavg()[0]:.1f})"
            )

        rtt = await redis_rtt(handle, args.pings)
        print(f"redis PING round trip: p50 {pct(rtt, 0.5):.1f} us, p99 {pct(rtt, 0.99):.1f} us")

        async with handle.pool().acquire() as conn:
            await _cleanup(conn, prefix)
        await handle.redis().delete(settings.outbox_stream)

        if args.compare:
            sample = rows[: min(len(rows), 100_000)]
            results = await compare(database_url, sample, settings.outbox_batch, meter)
            for name, (rate, cpu_us) in results.items():
                cpu = "" if cpu_us is None else f", postgres CPU {cpu_us:.1f} us/row"
                print(f"  postgres-side {name:<28} {rate:>10,.0f} rows/s{cpu}")
    print(
        "store:"
        f" outbox_rows_per_s={drain_rate:.0f}"
        f" redis_rtt_p50_us={pct(rtt, 0.5):.1f}"
        f" redis_rtt_p99_us={pct(rtt, 0.99):.1f}"
        f" append_rows_per_s={len(rows) / append_s:.0f}"
        f" idle_ceiling_rows_per_s={estimate:.0f}"
        f" rows={len(rows)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pings", type=int, default=5_000)
    parser.add_argument("--inserters", type=int, default=INSERTERS, help="batches written at once")
    parser.add_argument("--batch", type=int, default=StoreSettings().outbox_batch)
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="embedded servers without fsync (what the tests use): CPU cost without disk waits",
    )
    parser.add_argument("--compare", action="store_true", help="also time COPY and executemany")
    parser.add_argument(
        "--plain-asyncio", action="store_true", help="stock asyncio loop instead of uvloop"
    )
    args = parser.parse_args()
    configure_logging("warning", "console")
    redis_url = os.environ.get(REDIS_URL_ENV) or None
    database_url = os.environ.get(DATABASE_URL_ENV) or None
    opts = {"use_uvloop": not args.plain_asyncio}
    # A private folder made by mkdtemp: on tmpfs when fsync is off anyway.
    shm = "/dev/shm"  # noqa: S108
    where = shm if args.no_fsync and os.access(shm, os.W_OK) else None
    with (
        tempfile.TemporaryDirectory(prefix="callwatch-bench-store-", dir=where) as tmp,
        EmbeddedServers(
            Path(tmp),
            redis_url=redis_url,
            database_url=database_url,
            durable=not args.no_fsync,
            handle_sigterm=False,
        ) as servers,
    ):
        meter = CpuMeter(
            {
                "redis": servers.redis.pid if servers.redis else None,
                "postgres": servers.postgres.pid if servers.postgres else None,
            }
        )
        main_ = functools.partial(run, args, servers.redis_url, servers.database_url, meter)
        anyio.run(main_, backend_options=opts)


if __name__ == "__main__":
    main()
