"""Filters benchmark: 10,000 users, token events through the users flow to the sender.

The real actors on real servers (an embedded Redis and PostgreSQL in a temporary folder):
the filter router, the shards (``filters.shards`` from the settings, default 1; see ``--shards``),
one user actor per user (started in bulk by the directory from PostgreSQL; they keep
their shard's rows, they are not on the path of an event), the notify gate with its
Redis claims and history rows, and the outbox writer draining those rows into
PostgreSQL all along (it lags during the sustained run and catches up before the paced
runs, which it then shares the machine with); recording stand-ins only for
``sender`` and ``multipliers`` (the end of the measured path: a notification request
handed to the sender) and for ``channel-stats`` (statistics are pushed once).

Users get varied filters (chains, FDV ranges, minimum channels, lookback, average gain,
win rate); one strictness knob over them is calibrated so that about 1 in 1,000
user-event pairs passes, as with real traders' filters. Events: mostly new tokens with
1-10 calling channels out of 400, 15 % repeats with one more channel (evaluated again),
5 % exact repeats (skipped by the re-check rule).

Runs:
1. sustained: events as fast as the flow takes them (backpressure through the router's
   mailbox); events/s until the last notification request reached the sender, and the
   share of a core this process got (the machine may be shared);
2. paced at ``--rate`` events/s (default 1,000): latency from handing an event to the
   router until each notification request reaches the sender (p50 / p99 / max); when the
   sustained rate is lower than ``--rate``, also at half the sustained rate.

Run: ``make bench-filters`` or ``python -m bench.filters`` (``--events 5000`` for a quick
look). Last line: ``filters: users=10000 events_per_s=... p99_ms=... user_evals_per_s=...``
(targets: >= 2,000 events/s sustained; p99 < 20 ms at 1,000 events/s).
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import bisect  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import anyio.lowlevel  # noqa: E402
import asyncpg  # noqa: E402
import numpy as np  # noqa: E402

from actors.filter_logic import EventFacts, ShardColumns  # noqa: E402
from actors.filter_router import COUNTS as ROUTER_COUNTS  # noqa: E402
from actors.filter_shard import COUNTS as SHARD_COUNTS  # noqa: E402
from actors.filter_shard import shard_name  # noqa: E402
from actors.notify_gate import GATE_IDLE  # noqa: E402
from actors.store.handle import StoreHandle  # noqa: E402
from actors.store.migrate import migrate  # noqa: E402
from actors.store.outbox import OutboxCounters, OutboxWriter  # noqa: E402
from actors.store.postgres_owner import PostgresOwner  # noqa: E402
from actors.store.redis_owner import RedisOwner  # noqa: E402
from actors.user_directory import users_branch  # noqa: E402
from messages.delivery import Outbound, Outbounds  # noqa: E402
from messages.filters import ChannelStats, FilterSettings, encode_settings  # noqa: E402
from messages.settings import FilterSettingsSection, StoreSettings  # noqa: E402
from messages.users import StatsSnapshot  # noqa: E402
from messages.wire import ChannelCall, TokenEvent  # noqa: E402
from runtime import Actor, ActorSystem, MailboxSpec  # noqa: E402
from runtime.logs import configure_logging  # noqa: E402
from runtime.servers import EmbeddedPostgres, EmbeddedRedis  # noqa: E402
from supervisors import Strategy, Tree, supervisor, worker  # noqa: E402

CHANNELS = 400
CHAINS = ("solana", "ethereum", "bsc", "base", "arbitrum", "ton")
CHAIN_P = (0.5, 0.15, 0.15, 0.12, 0.05, 0.03)
TARGET_PASS = 1e-3


class ArrivalLog:
    """When each notification request arrived, and its dedup key.

    Two flat lists of untracked objects (floats, strings) rather than a list of tuples:
    hundreds of thousands of tuples would be garbage-collector work that the measured
    process (whose sender keeps its queue in Redis) does not have.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.times)

    def clear(self) -> None:
        self.times.clear()
        self.keys.clear()


class Arrivals(Actor):
    """The sender's stand-in: records each notification request's arrival."""

    mailbox = MailboxSpec(capacity=1_000_000)

    def __init__(self, log: ArrivalLog) -> None:
        self.log = log

    async def receive(self, message: Any) -> Any:
        items = message.items if isinstance(message, Outbounds) else (message,)
        at = time.perf_counter()
        for o in items:
            if isinstance(o, Outbound):
                self.log.times.append(at)
                self.log.keys.append(o.dedup_key or "")
        return None


class Count(Actor):
    mailbox = MailboxSpec(capacity=1_000_000)

    def __init__(self) -> None:
        self.n = 0

    async def receive(self, message: Any) -> Any:
        self.n += 1
        return None


# -- synthetic population ------------------------------------------------------------------


def make_channels(rng: np.random.Generator) -> list[ChannelStats]:
    out = []
    for cid in range(1, CHANNELS + 1):
        resolved = int(rng.integers(3, 200))
        win = float(rng.beta(2.5, 3) * 100)
        gain = float(1 + rng.gamma(2, 0.6))
        out.append(
            ChannelStats(
                channel_id=cid,
                calls=resolved,
                resolved=resolved,
                win_rate=win,
                avg_gain=gain,
                median_gain=gain * 0.7,
                rated=resolved >= 5 and rng.random() < 0.9,
                wins=round(resolved * win / 100),
            )
        )
    return out


def make_calls(rng: np.random.Generator, now: float) -> list[tuple[int, float]]:
    n = int(min(10, 1 + rng.poisson(1.5)))
    ids = rng.choice(CHANNELS, size=n, replace=False) + 1
    return [(int(c), now - float(rng.uniform(0, 5400))) for c in ids]


def make_event(
    i: int, address: str, chain: str, fdv: float, calls: list[tuple[int, float]]
) -> TokenEvent:
    now = time.time()
    return TokenEvent(
        v=1,
        event_id=f"bench-{i}",
        seq=i + 1,
        emitted_at=now,
        chain_id=chain,
        token_address=address,
        pair_address=address + "P",
        price_usd="0.001",
        fdv=fdv,
        market_cap=fdv,
        liquidity_usd=50_000.0,
        volume_h24=100_000.0,
        symbol=f"S{i % 9973}",
        name=f"Token {i}",
        calls=tuple(
            ChannelCall(
                channel_id=cid,
                username=f"channel{cid}",
                message_id=k + 1,
                called_at=at,
                fdv_at_call=fdv,
            )
            for k, (cid, at) in enumerate(calls)
        ),
    )


def make_events(rng: np.random.Generator, n: int, offset: int) -> list[TokenEvent]:
    """Mostly new tokens; 15 % repeats with one more channel, 5 % exact repeats."""
    events: list[TokenEvent] = []
    now = time.time()
    for i in range(n):
        roll = rng.random()
        if events and roll < 0.2:
            base = events[int(rng.integers(max(0, len(events) - 1000), len(events)))]
            calls = [(c.channel_id, c.called_at) for c in base.calls]
            if roll < 0.15:
                used = {c for c, _ in calls}
                extra = int(rng.integers(1, CHANNELS + 1))
                if extra not in used and len(calls) < 12:
                    calls.append((extra, now - float(rng.uniform(0, 600))))
            events.append(
                make_event(offset + i, base.token_address, base.chain_id, base.fdv, calls)
            )
            continue
        chain = str(rng.choice(CHAINS, p=CHAIN_P))
        fdv = float(10 ** rng.uniform(4, 8))
        events.append(
            make_event(offset + i, f"T{offset + i:09d}", chain, fdv, make_calls(rng, now))
        )
    return events


class Population:
    """Random traders, drawn once; `settings` maps them through a strictness knob."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        singles = ("solana", "ethereum", "bsc", "base")
        self.n = n
        self.chains: list[frozenset[str]] = []
        for _ in range(n):
            roll = rng.random()
            if roll < 0.6:
                self.chains.append(frozenset({singles[int(rng.choice(4, p=(0.7, 0.1, 0.1, 0.1)))]}))
            elif roll < 0.8:
                self.chains.append(frozenset(str(c) for c in rng.choice(singles, 2, replace=False)))
            else:
                self.chains.append(frozenset())
        self.fdv_min = rng.choice([0, 10e3, 50e3, 100e3, 300e3], size=n)
        self.fdv_max = rng.choice([np.inf, 500e3, 2e6, 10e6, 50e6], size=n)
        self.win = rng.uniform(0, 1, size=n)
        self.gain = rng.uniform(0, 1, size=n)
        self.channels = rng.uniform(0, 1, size=(n, 3))
        self.lookback = rng.choice([900, 1800, 3600, 7200], size=n)

    def settings(self, k: float) -> list[FilterSettings]:
        """``k`` in [0, 1]: 0 lenient, 1 strict (win rate, gain and channel count rise)."""
        win = 25 + 35 * k + 30 * self.win
        gain = np.select(
            [self.gain < 0.5 - 0.4 * k, self.gain < 0.75 - 0.3 * k, self.gain < 0.9 - 0.2 * k],
            [0.0, 1.5, 2.0],
            3.0,
        )
        channels = 1 + (self.channels < 0.1 + 0.6 * k).sum(axis=1)
        out = []
        for i in range(self.n):
            fdv_max = None if self.fdv_max[i] == np.inf else float(self.fdv_max[i])
            fdv_min = float(self.fdv_min[i])
            if fdv_max is not None and fdv_max <= fdv_min:
                fdv_max = None
            out.append(
                FilterSettings(
                    min_win_rate=float(min(100.0, win[i])),
                    min_avg_gain=float(gain[i]),
                    fdv_min=fdv_min,
                    fdv_max=fdv_max,
                    chains=self.chains[i],
                    min_channels=int(channels[i]),
                    lookback=int(self.lookback[i]),
                )
            )
        return out


def pass_rate(
    users: list[FilterSettings], events: list[TokenEvent], stats: dict[int, ChannelStats]
) -> float:
    columns = ShardColumns(len(users))
    for uid, settings in enumerate(users):
        columns.upsert(uid, settings, active=True)
    now = time.time()
    hits = 0
    for ev in events:
        facts = EventFacts.from_calls(
            ev.chain_id, ev.fdv, [(c.channel_id, c.called_at) for c in ev.calls], stats, now
        )
        hits += len(columns.decide(facts))
    return hits / (len(users) * len(events))


def calibrate(
    seed: int, n: int, stats: dict[int, ChannelStats], sample: list[TokenEvent]
) -> tuple[list[FilterSettings], float]:
    """The strictness that makes about 1 in 1,000 user-event pairs pass."""
    population = Population(np.random.default_rng(seed), n)
    low, high = 0.0, 1.0
    users: list[FilterSettings] = []
    rate = 0.0
    for _ in range(10):
        mid = (low + high) / 2
        users = population.settings(mid)
        rate = pass_rate(users, sample, stats)
        if abs(rate - TARGET_PASS) < 0.1 * TARGET_PASS:
            break
        if rate > TARGET_PASS:
            low = mid
        else:
            high = mid
    return users, rate


# -- the run -------------------------------------------------------------------------------


async def seed_database(url: str, users: list[FilterSettings]) -> None:
    conn = await asyncpg.connect(url)
    await migrate(conn)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    end = start + dt.timedelta(days=30)
    try:
        ids = range(1, len(users) + 1)
        await conn.copy_records_to_table(
            "users", records=[(i, f"u{i}") for i in ids], columns=["chat_id", "username"]
        )
        await conn.copy_records_to_table(
            "settings",
            records=[(i, encode_settings(s).decode()) for i, s in zip(ids, users, strict=True)],
            columns=["chat_id", "filters"],
        )
        await conn.copy_records_to_table(
            "subscriptions",
            records=[(i, "monthly", start, end, "admin") for i in ids],
            columns=["chat_id", "plan", "starts_at", "expires_at", "source"],
        )
    finally:
        await conn.close()


async def quiet(tree: Tree, arrivals: ArrivalLog, shards: int) -> float:
    """Wait until the flow is idle; returns when its last piece of work finished."""
    await tree.lookup("filters").ask(ROUTER_COUNTS, timeout=600)
    for index in range(shards):
        await tree.lookup(shard_name(index)).ask(SHARD_COUNTS, timeout=600)
    done = time.perf_counter()
    seen = -1
    while True:
        await tree.lookup("notify-gate").ask(GATE_IDLE, timeout=600)
        await anyio.sleep(0.05)
        await tree.lookup("notify-gate").ask(GATE_IDLE, timeout=600)
        if len(arrivals) == seen:
            break
        seen = len(arrivals)
    return max(done, arrivals.times[-1] if arrivals.times else done)


async def run(args: argparse.Namespace, redis_url: str, database_url: str) -> None:
    rng = np.random.default_rng(args.seed)
    channels = make_channels(rng)
    stats = {c.channel_id: c for c in channels}
    sample = make_events(np.random.default_rng(args.seed + 1), 200, 10_000_000)
    t = time.perf_counter()
    users, rate = calibrate(args.seed, args.users, stats, sample)
    took = time.perf_counter() - t
    print(f"calibrated {args.users:,} users to a pass rate of {rate:.5f} in {took:.1f} s")

    await seed_database(database_url, users)
    config = FilterSettingsSection(shards=args.shards) if args.shards else FilterSettingsSection()
    store = StoreHandle(redis_url, database_url)
    arrivals = ArrivalLog()
    written = OutboxCounters()
    # A generous timeout: on a busy shared machine the store owners' liveness probes must
    # not time out (and restart the tree) in the middle of a measurement.
    quiet_store = StoreSettings(pool_max=10, call_timeout=30.0 if args.profile else 10.0)
    spec = supervisor(
        "root",
        [
            worker("redis", RedisOwner, store=store, settings=quiet_store),
            worker("postgres", PostgresOwner, store=store, settings=quiet_store),
            *(
                []
                if args.no_writer
                else [
                    worker(
                        "outbox", OutboxWriter, store=store, settings=quiet_store, counters=written
                    )
                ]
            ),
            worker("sender", Arrivals, log=arrivals),
            worker("multipliers", Count),
            worker("channel-stats", Count),
            users_branch(store, config),
        ],
        strategy=Strategy.REST_FOR_ONE,
    )
    t = time.perf_counter()
    async with Tree(spec, ActorSystem()).running() as tree:
        boot = time.perf_counter() - t
        print(
            f"tree with {args.users:,} user actors up in {boot:.2f} s "
            f"({config.shards} shard{'s' if config.shards != 1 else ''})"
        )
        router = tree.lookup("filters")
        await router.ask(StatsSnapshot(version=1, computed_at=time.time(), stats=tuple(channels)))

        sustained = make_events(rng, args.events, 0)
        gc.collect()
        gc.freeze()

        # 1. sustained
        profiler = None
        if args.profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        for i, event in enumerate(sustained):
            await router.tell(event)
            if i % 64 == 63:
                await anyio.lowlevel.checkpoint()
        end = await quiet(tree, arrivals, config.shards)
        elapsed = end - t0
        cpu = time.process_time() - cpu0
        if profiler is not None:
            import pstats

            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.profile_sort).print_stats(40)
        counts = await router.ask(ROUTER_COUNTS)
        notified = len(arrivals)
        events_per_s = len(sustained) / elapsed
        evals_per_s = counts.routed * args.users / elapsed
        print(
            f"sustained: {len(sustained):,} events in {elapsed:.2f} s = "
            f"{events_per_s:,.0f} events/s; "
            f"{counts.routed:,} evaluated ({counts.repeats_skipped:,} repeats skipped), "
            f"{notified:,} notification requests ({notified / elapsed:,.0f}/s), "
            f"pass rate {notified / (counts.routed * args.users):.5f}; "
            f"this process had {cpu / (time.perf_counter() - t0):.0%} of a core "
            f"({len(sustained) / cpu:,.0f} events per CPU second)"
        )

        # The history of the sustained run: written while the flow ran, finished here, so
        # that the paced runs meet a drained outbox, as in production.
        t = time.perf_counter()
        while not args.no_writer:
            if not await store.redis().xlen(quiet_store.outbox_stream):
                break
            await anyio.sleep(0.1)
        print(
            f"history: {written.inserted:,} notification rows in PostgreSQL, the outbox "
            f"writer done {time.perf_counter() - t:.1f} s after the last request"
        )

        # 2. paced: at the target rate, and at half the sustained rate when that is lower
        rates = [args.rate]
        if events_per_s < args.rate:
            rates.append(max(10.0, round(events_per_s / 2, -1)))
        p99_at: dict[float, float] = {}
        for rate in rates:
            paced = make_events(rng, int(rate * args.paced_s), 10_000_000 + int(rate) * 100_000)
            p99_at[rate] = await paced_run(tree, router, paced, rate, arrivals, config.shards)
        gc.unfreeze()
        client = store.redis()
        scripts = (await client.info("commandstats")).get("cmdstat_evalsha", {})
        cpu_info = await client.info("cpu")
        print(
            f"redis: {scripts.get('calls', 0):,} claim scripts, "
            f"{scripts.get('usec_per_call', 0.0) / 1000:.1f} ms each; "
            f"redis CPU {cpu_info['used_cpu_user'] + cpu_info['used_cpu_sys']:.1f} s"
        )
    p99 = p99_at[args.rate]
    print(
        f"filters: users={args.users} events_per_s={events_per_s:.0f} p99_ms={p99:.1f} "
        f"user_evals_per_s={evals_per_s:.0f}"
    )


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies of the whole machine from /proc/stat; (0, 0) elsewhere.

    Steal is CPU time the hypervisor gave to other guests: on a shared VM it stalls every
    process at random moments, which a p99 over ten seconds cannot hide, so the paced runs
    report it next to their latencies.
    """
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


async def paced_run(
    tree: Tree,
    router: Any,
    events: list[TokenEvent],
    rate: float,
    arrivals: ArrivalLog,
    shards: int,
) -> float:
    """Feed ``events`` at ``rate``; print latency to the sender; return the p99 in ms."""
    arrivals.clear()
    sent: dict[str, list[float]] = {}
    steal0, total0 = cpu_ticks()
    t0 = time.perf_counter()
    for i, event in enumerate(events):
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            await anyio.sleep(due - now)
        sent.setdefault(event.token_key, []).append(time.perf_counter())
        await router.tell(event)
    behind = time.perf_counter() - (t0 + len(events) / rate)
    steal1, total1 = cpu_ticks()
    steal = (steal1 - steal0) / max(1, total1 - total0)
    await quiet(tree, arrivals, shards)
    latencies = []
    for at, key in zip(arrivals.times, arrivals.keys, strict=True):
        # a repeat with a new channel may notify more users: measure from the latest event
        # of the token handed over before the notification arrived
        times = sent[key.split(":", 2)[2]]
        latencies.append((at - times[bisect.bisect_right(times, at) - 1]) * 1000)
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    p50, p99, worst = np.percentile(lat, 50), np.percentile(lat, 99), lat.max()
    print(
        f"paced at {rate:,.0f} events/s for {len(events) / rate:.0f} s: {len(latencies):,} "
        f"notification requests, latency p50={p50:.1f} ms p99={p99:.1f} ms max={worst:.1f} ms; "
        f"CPU steal {steal:.0%}"
        + (f" (the feed fell {behind:.1f} s behind)" if behind > 0.5 else "")
    )
    return float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--paced-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--shards", type=int, default=0, help="0: the settings' default")
    parser.add_argument(
        "--no-writer", action="store_true", help="leave the history in Redis (the path alone)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the sustained run")
    parser.add_argument("--profile-sort", default="tottime")
    parser.add_argument("--plain-asyncio", action="store_true", help="stock loop, not uvloop")
    args = parser.parse_args()
    configure_logging("warning", "console", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="callwatch-bench-") as folder:
        redis_server = EmbeddedRedis(Path(folder), durable=False)
        postgres = EmbeddedPostgres(Path(folder), durable=False)
        redis_server.start()
        postgres.start()
        try:
            anyio.run(
                run,
                args,
                redis_server.url,
                postgres.url,
                backend="asyncio",
                backend_options={"use_uvloop": not args.plain_asyncio},
            )
        finally:
            postgres.stop("immediate")
            redis_server.kill()


if __name__ == "__main__":
    main()
