"""``callwatch demo``: the whole system against the sandbox, on embedded servers.

It starts the sandbox peers (signal feed, Telegram emulator, Solana node, NOWPayments),
embedded Redis and PostgreSQL, seeds a month of channel history so channels have
ratings, then the whole tree; five simulated users register through the emulator with
different filters and get subscriptions from the admin. A scripted call and pump make
sure a notification and a multiplier alert happen early; the feed is cut once (a
supervised restart) and stalled past a shortened health threshold (an alert and its
recovery). ``--duration N --summary FILE`` runs headless and writes what happened.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import anyio
import asyncpg
import msgspec
import redis.asyncio as aioredis
import structlog
from prometheus_client import REGISTRY
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from actors.store.migrate import migrate
from actors.user_directory import ask_users
from callwatch.app import Environment, build_tree
from callwatch.service import StopSignal, remove_runfile, storage, write_runfile
from callwatch.status import render
from messages.settings import Secret, Settings
from messages.solana import b58encode
from messages.users import SetFilter
from runtime.logs import configure_logging
from sandbox.feed.server import FeedServer
from sandbox.nowpayments import NowPaymentsStub
from sandbox.solana import SolanaRpcStub
from sandbox.telegram.server import TelegramEmulator
from supervisors import Tree

log = structlog.get_logger("callwatch.demo")

DEMO_BOT_TOKEN = "123456:DEMO-TOKEN"  # noqa: S105 - the sandbox emulator's token, not a secret
DEMO_IPN_SECRET = "demo-ipn-secret"  # noqa: S105 - shared with the sandbox NOWPayments stub
DEMO_API_KEY = "sandbox-api-key"
ADMIN_CHAT = 900_001
USERS: dict[int, tuple[str, dict[str, str]]] = {
    100_001: ("alice", {"min_win_rate": "0", "min_channels": "1"}),
    100_002: ("bob", {"min_win_rate": "30%", "fdv_max": "50m"}),
    100_003: ("carol", {"min_win_rate": "20%", "chains": "solana"}),
    100_004: ("dave", {"min_channels": "2", "lookback": "6h"}),
    100_005: ("erin", {"fdv_min": "100k", "min_avg_gain": "1.2x"}),
}
CUT_AT_S = 6.0
STALL_AT_S = 12.0
STALL_S = 8.0


def demo_settings(
    base: Settings,
    feed: FeedServer,
    emulator: TelegramEmulator,
    solana: SolanaRpcStub,
    nowpayments: NowPaymentsStub,
) -> Settings:
    """The user's settings pointed at the sandbox, with thresholds short enough to watch."""
    replace = msgspec.structs.replace
    wallet = b58encode(bytes(range(1, 33)))
    return replace(
        base,
        feed=replace(base.feed, url=feed.url),
        telegram=replace(
            base.telegram,
            bot_token=Secret(DEMO_BOT_TOKEN),
            api_base_url=emulator.base_url,
            admin_chat_ids=(ADMIN_CHAT,),
            poll_timeout=1.0,
        ),
        control=replace(base.control, port=0),
        filters=replace(base.filters, stats_refresh_s=5.0, stats_min_sample=3),
        health=replace(base.health, sample_s=1.0, feed_silent_s=5.0),
        payments=replace(
            base.payments,
            wallet=wallet,
            solana_rpc_url=solana.url,
            nowpayments_api_url=nowpayments.url,
            nowpayments_api_key=base.payments.nowpayments_api_key or Secret(DEMO_API_KEY),
            ipn_secret=base.payments.ipn_secret or Secret(DEMO_IPN_SECRET),
            ipn_port=0,
        ),
    )


async def seed_history(database_url: str, feed: FeedServer, now: datetime) -> int:
    """A month of past calls per sandbox channel, pumping as often as the channel's hit
    rate says, so the channel statistics have something to rate from the first minute."""
    rng = random.Random(11)  # noqa: S311 - demo data
    rows = []
    for channel in feed.generator.channels:
        for i in range(12):
            called = now - timedelta(days=rng.uniform(2, 28), minutes=i)
            fdv = rng.uniform(50_000, 5_000_000)
            multiple = (
                rng.uniform(2, 12) if rng.random() < channel.hit_rate else rng.uniform(0.2, 1.8)
            )
            token = f"solana:Demo{channel.channel_id}x{i}"
            rows.append(
                (
                    f"demo:{channel.channel_id}:{i}",
                    f"demo-{channel.channel_id}-{i}",
                    str(channel.channel_id),
                    channel.username,
                    token,
                    "solana",
                    f"D{i}",
                    called,
                    fdv,
                    fdv * multiple,
                    called + timedelta(hours=rng.uniform(1, 48)),
                )
            )
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        await conn.executemany(
            """INSERT INTO calls_history (dedup_key, event_id, channel_id, channel_username,
                   token_key, chain, symbol, called_at, fdv_at_call, peak_fdv, peak_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT DO NOTHING""",
            rows,
        )
    finally:
        await conn.close()
    return len(rows)


def metric(name: str, **labels: str) -> float:
    """Sum of a counter's samples (all label values unless some are given)."""
    total = 0.0
    for family in REGISTRY.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def counts(tree: Tree, feed: FeedServer, emulator: TelegramEmulator) -> dict[str, Any]:
    """What happened so far, from the metrics, the tree and the sandbox peers."""
    snapshot = tree.status()
    return {
        "events": int(metric("callwatch_ingest_events")),
        "events_emitted_by_feed": feed.last_seq,
        "rejected": int(metric("callwatch_ingest_rejected")),
        "notifications": int(metric("callwatch_sender_sent", kind="notification")),
        "multiplier_alerts": int(metric("callwatch_sender_sent", kind="multiplier")),
        "telegram_messages": len(emulator.sent()),
        "restarts": sum(node.restarts_total for node in snapshot.walk()),
        "health_alerts": int(metric("callwatch_health_alerts")),
        "health_recoveries": int(metric("callwatch_health_recoveries")),
        "actors": len(snapshot.walk()),
        "web_chat": emulator.web_url,
    }


def view(tree: Tree, feed: FeedServer, emulator: TelegramEmulator, env: Environment) -> Group:
    data = counts(tree, feed, emulator)
    table = Table(title="callwatch demo", show_header=False)
    for key in (
        "events",
        "notifications",
        "multiplier_alerts",
        "telegram_messages",
        "restarts",
        "health_alerts",
        "health_recoveries",
        "web_chat",
    ):
        table.add_row(key.replace("_", " "), str(data[key]))
    body = {
        "tree": msgspec.to_builtins(tree.status()),
        "health": {k: v.get("state") for k, v in env.health.view().items()},
        "dead_letters": dict(tree.system.dead_letters.by_reason),
    }
    return Group(table, render(body), Text("Ctrl-C stops the demo cleanly.", style="dim"))


async def onboard(tree: Tree, emulator: TelegramEmulator, env: Environment) -> None:
    """Five people start the bot, set their filters and get a week from the admin."""
    for chat_id, (name, _) in USERS.items():
        emulator.push_message(chat_id, "/start", username=name, first_name=name.title())
    emulator.push_message(ADMIN_CHAT, "/start", username="admin", first_name="Admin")
    for chat_id in USERS:
        await emulator.wait_sent(chat_id, 1, timeout=30.0)
    for chat_id, (_, filters) in USERS.items():
        for field, text in filters.items():
            await ask_users(tree.lookup, SetFilter(chat_id=chat_id, field=field, text=text))
        await env.admin.handle(
            {"command": "grant", "args": {"user": str(chat_id), "plan": "weekly"}}
        )


async def showcase(feed: FeedServer) -> None:
    """A call by the best channels and, a little later, a 3x pump of it."""
    best = sorted(feed.generator.channels, key=lambda c: c.hit_rate, reverse=True)[:3]
    now = datetime.now(UTC).timestamp()
    calls = [
        {
            "channel_id": c.channel_id,
            "username": c.username,
            "called_at": now,
            "fdv_at_call": 400_000.0,
        }
        for c in best
    ]
    address = "DemoShowcase1111111111111111111111111111111"
    await feed.publish_token_event(
        chain="solana", token_address=address, symbol="SHOW", fdv=400_000.0, calls=calls
    )
    await anyio.sleep(4.0)
    await feed.publish_price("solana", address, 1_300_000.0)


async def script(
    tree: Tree, feed: FeedServer, emulator: TelegramEmulator, env: Environment
) -> None:
    """The demo's timeline, relative to the tree's start."""
    await onboard(tree, emulator, env)
    await anyio.sleep(2.0)
    await showcase(feed)
    await anyio.sleep(max(0.0, CUT_AT_S - 6.0))
    log.info("demo.cut_feed")
    await feed.disconnect_all(abrupt=True)
    await anyio.sleep(STALL_AT_S - CUT_AT_S)
    log.info("demo.stall_feed", seconds=STALL_S)
    feed.pause()
    await anyio.sleep(STALL_S)
    feed.resume()


def open_log(data_dir: Path) -> TextIO:
    """The live view owns the terminal, so logs go to a file beside the data."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return (data_dir / "demo.log").open("a")


async def run_demo(settings: Settings, *, duration: float | None, summary: Path | None) -> int:
    headless = duration is not None or not sys.stdout.isatty()
    log_file = open_log(Path(settings.data_dir))
    configure_logging(settings.log_level, "json", secrets=settings.secrets(), stream=log_file)
    console = Console()
    feed = FeedServer(rate=20.0, seed=7, history=50_000)
    emulator = TelegramEmulator(token=DEMO_BOT_TOKEN)
    solana = SolanaRpcStub()
    pay = settings.payments
    nowpayments = NowPaymentsStub(
        api_key=pay.nowpayments_api_key.reveal() if pay.nowpayments_api_key else DEMO_API_KEY,
        ipn_secret=pay.ipn_secret.reveal() if pay.ipn_secret else DEMO_IPN_SECRET,
    )
    for peer in (feed, emulator, solana, nowpayments):
        await peer.start("127.0.0.1", 0)
    settings = demo_settings(settings, feed, emulator, solana, nowpayments)
    configure_logging(settings.log_level, "json", secrets=settings.secrets(), stream=log_file)
    result: dict[str, Any] = {}
    stop = StopSignal()
    try:
        async with anyio.create_task_group() as watcher:
            await watcher.start(stop.watch)
            async with storage(settings) as store:
                # A new sandbox feed starts at seq 1: forget the last run's resume point.
                client = aioredis.from_url(store.redis_url)
                await client.delete("ingest:last_seq", "ingest:last_seq:ahead")
                await client.aclose()
                seeded = await seed_history(store.database_url, feed, datetime.now(UTC))
                log.info("demo.seeded_history", calls=seeded)
                env = Environment(
                    store=store, on_control_bound=lambda url: write_runfile(settings, url)
                )
                tree = Tree(build_tree(settings, env))
                async with tree.running(), anyio.create_task_group() as tg:
                    console.print(f"Web chat with the bot: {emulator.web_url}")
                    console.print("`callwatch status` in another terminal shows the tree.")
                    tg.start_soon(script, tree, feed, emulator, env)
                    with stop.cancels():
                        if headless:
                            with anyio.move_on_after(duration or 60.0):
                                await tree.wait()
                        else:
                            await live(console, tree, feed, emulator, env)
                    result = counts(tree, feed, emulator)
                    tg.cancel_scope.cancel()
            watcher.cancel_scope.cancel()
    finally:
        remove_runfile(settings)
        with anyio.CancelScope(shield=True):
            for peer in (feed, emulator, solana, nowpayments):
                await peer.stop()
        log_file.close()
    if summary is not None:
        await anyio.Path(summary).write_text(json.dumps(result, indent=2))
    console.print(
        f"demo finished: {result.get('events', 0)} events, "
        f"{result.get('notifications', 0)} notifications, "
        f"{result.get('multiplier_alerts', 0)} multiplier alerts, "
        f"{result.get('restarts', 0)} restarts; logs in {Path(settings.data_dir) / 'demo.log'}"
    )
    return 0


async def live(
    console: Console, tree: Tree, feed: FeedServer, emulator: TelegramEmulator, env: Environment
) -> None:
    with Live(view(tree, feed, emulator, env), console=console, refresh_per_second=2) as screen:
        while not tree.failed:
            await anyio.sleep(0.5)
            screen.update(view(tree, feed, emulator, env))
