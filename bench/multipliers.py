"""Multiplier benchmark: 2,500,000 tracked entries, persisted to a real Redis and rebuilt.

Shape as in the seed system: 25,000 tokens with about 100 tracked users each. Steps:
1. build the index with ``track()`` (as user actors would) and measure its memory;
2. persist every token through the actor's Redis store (pipelined SETs), to an embedded
   Redis in a temporary folder, or the server named by ``CALLWATCH_REDIS_URL``;
3. price updates, half for tracked tokens (random walks with rare pumps) and half for
   tokens nobody tracks, through the index: updates per second;
4. rebuild: start a fresh ``Multipliers`` actor in a tree and time its start (SCAN + MGET
   in chunks, the index and the per-user side index rebuilt), then push a mixed stream of
   price updates through the actor's coalescing mailbox.

Run: ``make bench-multipliers`` (or ``python -m bench.multipliers --tokens 2500`` for a
quick look). Last line:
``multipliers: entries=... rss_mb=... price_updates_per_s=... rebuild_s=...``
(targets: >= 200,000 updates/s, <= 400 MB for the index, rebuild <= 5 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and bench/runtime.py would
# shadow the ``runtime`` package: drop the folder.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import anyio.lowlevel  # noqa: E402
import numpy as np  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from redis.utils import HIREDIS_AVAILABLE  # noqa: E402

from actors.multiplier_index import SEVEN_DAYS  # noqa: E402
from actors.multipliers import Multipliers, RedisMultiplierStore, TokenWrite  # noqa: E402
from actors.store.handle import StoreHandle  # noqa: E402
from bench.multipliers_core import build_index, make_population, make_prices, rss_mb  # noqa: E402
from messages.tracking import TrackedBy  # noqa: E402
from messages.wire import PriceUpdate  # noqa: E402
from runtime import Actor  # noqa: E402
from runtime.logs import configure_logging  # noqa: E402
from runtime.servers import REDIS_URL_ENV, EmbeddedRedis  # noqa: E402
from supervisors import Tree, supervisor, worker  # noqa: E402


class NullSender(Actor):
    """Takes the alerts and counts them."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    async def receive(self, message: Any) -> Any:
        self.counts["alerts"] = self.counts.get("alerts", 0) + 1
        return None


def make_price(token_key: str, fdv: float, seq: int) -> PriceUpdate:
    chain, address = token_key.split(":", 1)
    return PriceUpdate(
        v=1,
        event_id=f"b{seq}",
        seq=seq,
        emitted_at=1_700_000_000.0,
        chain_id=chain,
        token_address=address,
        pair_address=address,
        price_usd="1",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=0.0,
        volume_h24=0.0,
    )


async def run(args: argparse.Namespace, url: str) -> None:
    rng = np.random.default_rng(args.seed)
    population = make_population(rng, args.tokens, args.users_per_token)
    n_tok = len(population.keys)
    now = time.time()

    # 1. build
    index, build_s, index_mb = build_index(population, now - 3_600.0)
    entries = len(index)
    print(f"build: {entries:,} entries via track() in {build_s:.1f} s; index {index_mb:.0f} MB")

    # 2. persist, through the actor's store
    client = aioredis.Redis.from_url(url, socket_timeout=60)
    await client.flushdb()
    handle = StoreHandle(url, "")
    handle.publish_redis(client)
    store = RedisMultiplierStore(handle)
    t0 = time.perf_counter()
    writes = []
    for key in index.take_dirty():
        newest = index.newest_notified_at(key) or now
        writes.append(TokenWrite(key, index.encode_token(key), "SYM", newest + SEVEN_DAYS - now))
    await store.write(writes)
    persist_s = time.perf_counter() - t0
    stored_mb = sum(len(w.blob) for w in writes) / 2**20
    del writes
    print(f"persist: {n_tok:,} tokens ({stored_mb:.0f} MB of blobs) in {persist_s:.2f} s")

    # 3. price updates through the index
    n = args.updates
    prices = make_prices(rng, population, n)
    updates = prices.updates
    on_price = index.on_price
    alerts = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for key, fdv in updates:
        got = on_price(key, fdv)
        if got:
            alerts += len(got)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_s = n / elapsed
    print(
        f"index: {n:,} price updates in {elapsed:.2f} s wall / {cpu:.2f} s cpu "
        f"({per_s:,.0f}/s wall, {n / cpu:,.0f}/s cpu), alerts={alerts:,}"
    )
    del index

    # 4. rebuild in a fresh actor, then updates through its mailbox
    counts: dict[str, int] = {}
    spec = supervisor(
        "root",
        [
            worker("sender", NullSender, counts=counts),
            worker("multipliers", Multipliers, store=handle, progress_every=250_000),
        ],
    )
    before = rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    async with Tree(spec).running() as tree:
        rebuild_s, rebuild_cpu = time.perf_counter() - t0, time.process_time() - c0
        actor_mb = rss_mb() - before
        mult = tree.lookup("multipliers")
        t1 = time.perf_counter()
        tracked_by = len(await mult.ask(TrackedBy(int(population.users[0][0]))))
        tracked_ms = (time.perf_counter() - t1) * 1000
        print(
            f"rebuild: actor started in {rebuild_s:.2f} s wall, {rebuild_cpu:.2f} s cpu "
            f"(hiredis parser: {'yes' if HIREDIS_AVAILABLE else 'no'}); index + side index "
            f"{actor_mb:.0f} MB; /tracked of one user: {tracked_by} tokens in {tracked_ms:.1f} ms"
        )
        m = min(args.actor_updates, n)
        messages = [make_price(key, fdv, i + 1) for i, (key, fdv) in enumerate(updates[:m])]

        def processed() -> int:
            return next(c for c in tree.status().children if c.name == "multipliers").processed

        # Yield every 256 messages, as a busy feed would: the actor keeps up, so most
        # updates are handled rather than coalesced away.
        first = processed()
        t0, c0 = time.perf_counter(), time.process_time()
        for i, message in enumerate(messages):
            await mult.tell(message)
            if i % 256 == 255:
                await anyio.lowlevel.checkpoint()
        await mult.ask(TrackedBy(0), timeout=60)
        actor_s, actor_cpu = time.perf_counter() - t0, time.process_time() - c0
        handled = processed() - first - 1
        print(
            f"actor: {m:,} price updates told in {actor_s:.2f} s wall / {actor_cpu:.2f} s cpu "
            f"({m / actor_s:,.0f}/s), {handled:,} handled, the rest coalesced; "
            f"alerts handed to the sender: {counts.get('alerts', 0):,}"
        )
    await client.aclose()
    print(
        f"multipliers: entries={entries} rss_mb={index_mb:.0f} "
        f"price_updates_per_s={per_s:.0f} rebuild_s={rebuild_s:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=25_000)
    parser.add_argument("--users-per-token", type=int, default=100)
    parser.add_argument("--updates", type=int, default=2_000_000)
    parser.add_argument("--actor-updates", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    configure_logging("info", "console", stream=sys.stderr)

    url = os.environ.get(REDIS_URL_ENV)
    if url:
        anyio.run(run, args, url)
        return
    with tempfile.TemporaryDirectory(prefix="callwatch-bench-") as folder:
        server = EmbeddedRedis(Path(folder), durable=False)
        server.start()
        try:
            anyio.run(run, args, server.url)
        finally:
            server.kill()


if __name__ == "__main__":
    main()
