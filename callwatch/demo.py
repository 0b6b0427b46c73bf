"""``callwatch demo``: the whole system against the sandbox, on embedded servers.

Starts the sandbox peers (signal feed, Telegram emulator), embedded Redis and
PostgreSQL, then the application tree; shows a live view (or runs headless for
``--duration``), cuts the feed once so a supervised restart is visible, and writes a
JSON summary with ``--summary``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import anyio
import msgspec
import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from callwatch.app import Environment, build_tree
from callwatch.service import remove_runfile, storage, write_runfile
from callwatch.status import render
from messages.settings import Settings
from runtime.logs import configure_logging
from sandbox.feed.server import FeedServer
from sandbox.telegram.server import TelegramEmulator
from supervisors import Tree

log = structlog.get_logger("callwatch.demo")

DEMO_BOT_TOKEN = "123456:DEMO-TOKEN"  # noqa: S105 - the sandbox emulator's token, not a secret


def counts(tree: Tree, feed: FeedServer, emulator: TelegramEmulator) -> dict[str, Any]:
    """What happened so far, from the tree snapshot and the sandbox peers' own logs."""
    snapshot = tree.status()
    restarts = sum(node.restarts_total for node in snapshot.walk())
    sent = emulator.sent()
    return {
        "events_emitted": feed.last_seq,
        "restarts": restarts,
        "actors": len(snapshot.walk()),
        "telegram_messages": len(sent),
        "tree": msgspec.to_builtins(snapshot),
    }


def view(tree: Tree, feed: FeedServer, emulator: TelegramEmulator) -> Group:
    data = counts(tree, feed, emulator)
    table = Table(title="callwatch demo", show_header=False, expand=False)
    table.add_row("events from the feed", str(data["events_emitted"]))
    table.add_row("Telegram messages sent", str(data["telegram_messages"]))
    table.add_row("supervised restarts", str(data["restarts"]))
    table.add_row("web chat", emulator.web_url)
    body = {"tree": data["tree"], "health": {}, "dead_letters": {}, "loop_lag_ms": 0}
    return Group(table, render(body), Text("Ctrl-C stops the demo cleanly.", style="dim"))


def open_log(data_dir: Path) -> TextIO:
    """The live view owns the terminal, so logs go to a file beside the data."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return (data_dir / "demo.log").open("a")


async def run_demo(settings: Settings, *, duration: float | None, summary: Path | None) -> int:
    headless = duration is not None or not sys.stdout.isatty()
    log_file = open_log(Path(settings.data_dir)) if not headless else None
    configure_logging(
        settings.log_level,
        "json" if log_file is not None else settings.log_format,
        secrets=settings.secrets(),
        stream=log_file,
    )
    console = Console()
    feed = FeedServer(rate=20.0, seed=7)
    emulator = TelegramEmulator(token=DEMO_BOT_TOKEN)
    await feed.start("127.0.0.1", 0)
    await emulator.start("127.0.0.1", 0)
    result: dict[str, Any] = {}
    try:
        async with storage(settings) as store:
            env = Environment(
                store=store,
                telegram_base_url=emulator.base_url,
                feed_url=feed.url,
                on_control_bound=lambda url: write_runfile(settings, url),
            )
            tree = Tree(build_tree(settings, env))
            async with tree.running():
                console.print(f"web chat: {emulator.web_url}")
                if headless:
                    await run_headless(tree, duration or 30.0)
                else:
                    await run_live(console, tree, feed, emulator)
                result = counts(tree, feed, emulator)
    finally:
        remove_runfile(settings)
        with anyio.CancelScope(shield=True):
            await emulator.stop()
            await feed.stop()
        if log_file is not None:
            log_file.close()
    if summary is not None:
        await anyio.Path(summary).write_text(json.dumps(result, indent=2))
    console.print(
        f"demo finished: {result.get('events_emitted', 0)} events, "
        f"{result.get('telegram_messages', 0)} Telegram messages, "
        f"{result.get('restarts', 0)} restarts"
    )
    return 0


async def run_headless(tree: Tree, duration: float) -> None:
    with anyio.move_on_after(duration):
        await tree.wait()


async def run_live(
    console: Console, tree: Tree, feed: FeedServer, emulator: TelegramEmulator
) -> None:
    with Live(view(tree, feed, emulator), console=console, refresh_per_second=4) as live:
        while not tree.failed:
            await anyio.sleep(0.5)
            live.update(view(tree, feed, emulator))
