"""Sender benchmark: a 10,000-message broadcast at Telegram's limits, with users sending commands.

The Bot API emulator runs in a child process (Telegram is another machine; sharing one event
loop would halve both), enforcing the limits with real 429s. The sender queues a broadcast in
the bulk lane, and for ``--seconds`` simulated users ask for interactive replies (``--commands``
per second, to random broadcast recipients, so per-chat pacing is in play). The rate is what
the emulator delivered inside the window, from its own log; violations are its 429 counts.

Run: ``python bench/sender.py`` (60 s at 30/s), ``python bench/sender.py --limit 1000
--seconds 20`` for the paid-broadcast ceiling. With no ``CALLWATCH_REDIS_URL`` an embedded Redis
is started in a temporary folder. The last line is the summary.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from prometheus_client import REGISTRY  # noqa: E402

from actors.sender import Sender  # noqa: E402
from actors.store.handle import StoreHandle  # noqa: E402
from messages.delivery import Delivered, Lane, Outbound, SenderStats, SenderStatus  # noqa: E402
from messages.settings import Secret, SenderSettings, TelegramSettings  # noqa: E402
from runtime import ActorSystem, Ref  # noqa: E402
from runtime.logs import configure_logging  # noqa: E402
from runtime.servers import REDIS_URL_ENV, EmbeddedRedis  # noqa: E402
from supervisors import Tree, supervisor, worker  # noqa: E402

TOKEN = "123456:BENCH-TOKEN"  # noqa: S105 - the emulator's fake token
FIRST_USER = 1_000_000


class EmulatorProcess:
    """``python -m sandbox.telegram`` on a free port, read back from its banner."""

    def __init__(self, limit: float, latency: float) -> None:
        self.limit = limit
        self.latency = latency
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> EmulatorProcess:
        env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox.telegram",
                "--port",
                "0",
                "--token",
                TOKEN,
                "--global-rate",
                str(self.limit),
                "--latency",
                str(self.latency),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if "base_url=" in line:
                self.base_url = line.split("base_url=", 1)[1].strip()
                return self
        self.__exit__()
        raise RuntimeError("the emulator did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def control(self, path: str) -> Any:
        origin = self.base_url.rsplit("/bot", 1)[0]
        with urllib.request.urlopen(f"{origin}/_emulator/{path}", timeout=60) as answer:  # noqa: S310
            return json.loads(answer.read())["result"]


async def run(
    args: argparse.Namespace, limit: float, redis_url: str, emu: EmulatorProcess
) -> dict[str, float]:
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    handle = StoreHandle(redis_url, "")
    handle.publish_redis(client)
    in_flight = args.in_flight or SenderSettings().in_flight
    settings = SenderSettings(
        global_rate=limit,
        in_flight=in_flight,
        one_way_share=args.one_way_share,
        connection_pool=args.pool,
    )
    spec = supervisor(
        "root",
        [
            worker(
                "sender",
                Sender,
                store=handle,
                settings=settings,
                telegram=TelegramSettings(bot_token=Secret(TOKEN)),
                base_url=emu.base_url,
            )
        ],
    )
    rtt_sum0 = REGISTRY.get_sample_value("callwatch_sender_request_seconds_sum") or 0.0
    rtt_n0 = REGISTRY.get_sample_value("callwatch_sender_request_seconds_count") or 0.0
    latencies: list[float] = []
    failures = 0
    rng = random.Random(7)
    async with Tree(spec, ActorSystem()).running() as tree:
        sender = tree.lookup("sender")
        for i in range(args.broadcast):
            await sender.tell(
                Outbound(
                    chat_id=FIRST_USER + i,
                    text=f"<b>Weekly report</b>\nHello user {i}, here is what happened.",
                    lane=Lane.BULK,
                    kind="broadcast",
                )
            )
        while (await stats(sender)).accepted < args.broadcast:  # noqa: ASYNC110 - polling an ask
            await anyio.sleep(0.05)
        start_wall = time.monotonic()
        end = anyio.current_time() + args.seconds

        async def command(user: int) -> None:
            nonlocal failures
            t0 = anyio.current_time()
            answer = await sender.ask(
                Outbound(chat_id=user, text=f"/status for {user}", lane=Lane.INTERACTIVE), 30
            )
            if isinstance(answer, Delivered):
                latencies.append(anyio.current_time() - t0)
            else:
                failures += 1

        async with anyio.create_task_group() as tg:
            while anyio.current_time() < end:
                tg.start_soon(command, FIRST_USER + rng.randrange(args.broadcast))
                await anyio.sleep(rng.expovariate(args.commands))
        end_wall = time.monotonic()
        status = await stats(sender)
    await client.aclose()
    rtt_n = (REGISTRY.get_sample_value("callwatch_sender_request_seconds_count") or 0.0) - rtt_n0
    rtt_sum = (REGISTRY.get_sample_value("callwatch_sender_request_seconds_sum") or 0.0) - rtt_sum0
    rtt_ms = 1000 * rtt_sum / rtt_n if rtt_n else math.nan

    sent = emu.control("sent")
    stats_now = emu.control("stats")
    window = [s for s in sent if start_wall <= s["t"] <= end_wall]
    seconds = end_wall - start_wall
    rate = len(window) / seconds
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else math.nan
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000
    violations = sum(stats_now["violations"].values())
    backlog_left = sum(status.queued.values())
    print(
        f"limit {limit:g}/s: {len(window)} delivered in {seconds:.1f} s, "
        f"interactive p50 {p50:.0f} ms p99 {p99:.0f} ms ({len(latencies)} replies, "
        f"{failures} failed), backlog left {backlog_left}, in_flight {in_flight}, "
        f"mean Bot API round trip {rtt_ms:.0f} ms (emulator latency {args.latency * 1000:.0f} ms)"
    )
    if backlog_left == 0:
        print("  note: the broadcast ran dry inside the window; the rate is a lower bound")
    return {
        "sent_per_s": rate,
        "limit": limit,
        "ratio": rate / limit,
        "violations": violations,
        "p99": p99,
        "p50": p50,
    }


async def stats(sender: Ref) -> SenderStatus:
    status: SenderStatus = await sender.ask(SenderStats(), timeout=30)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=float, action="append", help="global msgs/s (repeatable)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--broadcast", type=int, default=10_000)
    parser.add_argument("--commands", type=float, default=3.0, help="interactive asks per second")
    parser.add_argument("--latency", type=float, default=0.02, help="emulator round trip (s)")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=0,
        help="0: the default (8); more makes httpx slower here, not faster",
    )
    parser.add_argument("--pool", type=int, default=0, help="HTTP connections; 0: in_flight+2")
    parser.add_argument("--one-way-share", type=float, default=0.0)
    parser.add_argument("--plain-asyncio", action="store_true")
    args = parser.parse_args()
    configure_logging("error", "console")
    limits = args.limit or [30.0]
    redis_url = os.environ.get(REDIS_URL_ENV)
    with tempfile.TemporaryDirectory(prefix="callwatch-bench-sender-") as tmp:
        server = None
        if not redis_url:
            server = EmbeddedRedis(Path(tmp) / "redis", durable=False)
            server.start()
            redis_url = server.url
        try:
            results = []
            for limit in limits:
                with EmulatorProcess(limit, args.latency) as emu:
                    results.append(
                        anyio.run(
                            run,
                            args,
                            limit,
                            redis_url,
                            emu,
                            backend="asyncio",
                            backend_options={"use_uvloop": not args.plain_asyncio},
                        )
                    )
        finally:
            if server is not None:
                server.kill()
    for r in results:
        print(
            f"sender: sent_per_s={r['sent_per_s']:.2f} limit={r['limit']:g} ratio={r['ratio']:.3f}"
            f" violations={r['violations']:.0f} interactive_p99_ms={r['p99']:.0f}"
        )


if __name__ == "__main__":
    main()
