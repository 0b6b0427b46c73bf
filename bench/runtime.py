"""Runtime benchmark: this actor runtime (asyncio backend) against pykka ThreadingActor.

Same workloads, one run, so the ratios hold on a noisy shared machine:
bulk tell throughput, a ring of actors passing tokens (hops/s), ask round-trip
latency, and spawning 10,000 actors under a dynamic supervisor: idle ones (no
``started``: parked until their first message, ``spawn_10k_s``) and ones with a
``started`` hook (a task each, ``spawn_10k_started_s``).

Run: ``make bench-runtime`` (or ``python bench/runtime.py --quick``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name shadows the
# ``runtime`` package: drop the folder (``python -m bench.runtime`` needs no fix).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from typing import Any  # noqa: E402

import anyio  # noqa: E402
import pykka  # noqa: E402

from runtime import Actor, MailboxSpec, Ref  # noqa: E402
from runtime.logs import configure_logging  # noqa: E402
from supervisors import Tree, dynamic_supervisor, start_children, supervisor, worker  # noqa: E402

ROUNDS = 3
"""Ring measurements per side, taken turn about (the median is reported)."""

# ---------------------------------------------------------------- this runtime


class Sink(Actor):
    mailbox = MailboxSpec(capacity=10_000)

    def __init__(self, expected: int, done: anyio.Event) -> None:
        self.expected = expected
        self.done = done
        self.count = 0

    async def receive(self, message: Any) -> Any:
        self.count += 1
        if self.count == self.expected:
            self.done.set()
        return message


class RingNode(Actor):
    mailbox = MailboxSpec(capacity=100_000)

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.next: Ref | None = None

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Ref):
            self.next = message
            return None
        if message <= 0:
            self.state["finished"] += 1
            if self.state["finished"] == self.state["tokens"]:
                self.state["done"].set()
            return None
        assert self.next is not None
        self.next.tell_nowait(message - 1)
        return None


class Echo(Actor):
    async def receive(self, message: Any) -> Any:
        return message


class StartedEcho(Echo):
    """An Echo with a ``started`` hook: each one needs its own task from the start."""

    async def started(self) -> None:
        pass


async def ours_bulk(n: int) -> float:
    done = anyio.Event()
    spec = supervisor("root", [worker("sink", Sink, expected=n, done=done)])
    async with Tree(spec).running() as tree:
        ref = tree.lookup("sink")
        start = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        await done.wait()
        return n / (time.perf_counter() - start)


async def ours_ring(nodes: int, tokens: int, hops: int) -> float:
    state: dict[str, Any] = {"finished": 0, "tokens": tokens, "done": anyio.Event()}
    children = [worker(f"n{i}", RingNode, state=state) for i in range(nodes)]
    async with Tree(supervisor("root", children)).running() as tree:
        refs = [tree.lookup(f"root/n{i}") for i in range(nodes)]
        for i, ref in enumerate(refs):
            await ref.ask(refs[(i + 1) % nodes])
        per_token = hops // tokens
        start = time.perf_counter()
        for t in range(tokens):
            refs[t % nodes].tell_nowait(per_token)
        await state["done"].wait()
        return per_token * tokens / (time.perf_counter() - start)


async def ours_ask(n: int) -> list[float]:
    async with Tree(supervisor("root", [worker("echo", Echo)])).running() as tree:
        ref = tree.lookup("echo")
        for _ in range(200):
            await ref.ask(0)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            await ref.ask(i)
            samples.append(time.perf_counter() - t0)
        return samples


async def ours_spawn(n: int, trace_memory: bool, actor: type[Actor] = Echo) -> tuple[float, float]:
    """Time (untraced run) or memory (traced run: tracemalloc slows everything)."""
    spec = supervisor("root", [dynamic_supervisor("users", max_children=n + 1)])
    async with Tree(spec).running() as tree:
        users = tree.lookup("users")
        gc.collect()
        if trace_memory:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        refs = await start_children(users, [worker(f"user:{i}", actor) for i in range(n)])
        elapsed = time.perf_counter() - start
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert all(isinstance(ref, Ref) for ref in refs)
        assert await tree.lookup(f"user:{n - 1}").ask("ok") == "ok"
        return elapsed, (after - before) / n / 1024


# ---------------------------------------------------------------- pykka


class PykkaSink(pykka.ThreadingActor):
    def __init__(self, expected: int, done: threading.Event) -> None:
        super().__init__()
        self.expected, self.done, self.count = expected, done, 0

    def on_receive(self, message: Any) -> Any:
        self.count += 1
        if self.count == self.expected:
            self.done.set()
        return message


class PykkaRingNode(pykka.ThreadingActor):
    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__()
        self.state = state
        self.next: Any = None

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, pykka.ActorRef):
            self.next = message
            return None
        if message <= 0:
            with self.state["lock"]:
                self.state["finished"] += 1
                if self.state["finished"] == self.state["tokens"]:
                    self.state["done"].set()
            return None
        self.next.tell(message - 1)
        return None


class PykkaEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


def pykka_bulk(n: int) -> float:
    done = threading.Event()
    ref = PykkaSink.start(n, done)
    start = time.perf_counter()
    for i in range(n):
        ref.tell(i)
    done.wait()
    rate = n / (time.perf_counter() - start)
    ref.stop()
    return rate


def pykka_ring(nodes: int, tokens: int, hops: int) -> float:
    state: dict[str, Any] = {
        "finished": 0,
        "tokens": tokens,
        "done": threading.Event(),
        "lock": threading.Lock(),
    }
    refs = [PykkaRingNode.start(state) for _ in range(nodes)]
    for i, ref in enumerate(refs):
        ref.ask(refs[(i + 1) % nodes])
    per_token = hops // tokens
    start = time.perf_counter()
    for t in range(tokens):
        refs[t % nodes].tell(per_token)
    state["done"].wait()
    rate = per_token * tokens / (time.perf_counter() - start)
    pykka.ActorRegistry.stop_all()
    return rate


def pykka_ask(n: int) -> list[float]:
    ref = PykkaEcho.start()
    for _ in range(200):
        ref.ask(0)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        ref.ask(i)
        samples.append(time.perf_counter() - t0)
    ref.stop()
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller workloads (smoke test)")
    parser.add_argument(
        "--plain-asyncio", action="store_true", help="stock asyncio loop instead of uvloop"
    )
    args = parser.parse_args()
    configure_logging("warning", "console")
    scale = 10 if args.quick else 1
    bulk_n, hops, asks, spawn_n = 200_000 // scale, 400_000 // scale, 20_000 // scale, 10_000

    opts = {"use_uvloop": not args.plain_asyncio}
    ours_bulk_rate = anyio.run(ours_bulk, bulk_n, backend_options=opts)
    pykka_bulk_rate = pykka_bulk(bulk_n)
    # The ring rates swing with this shared machine's speed from one second to the next:
    # three rounds taken turn about, and the median of each side.
    rounds = [
        (
            anyio.run(ours_ring, 100, 1_000, hops, backend_options=opts),
            pykka_ring(100, 1_000, hops),
            anyio.run(ours_ring, 100, 1, hops // 10, backend_options=opts),
            pykka_ring(100, 1, hops // 10),
        )
        for _ in range(ROUNDS)
    ]
    ours_hops, pykka_hops, ours_hops_1, pykka_hops_1 = (
        statistics.median(column) for column in zip(*rounds, strict=True)
    )
    ours_lat = anyio.run(ours_ask, asks, backend_options=opts)
    pykka_lat = pykka_ask(asks)
    spawn_s, _ = anyio.run(ours_spawn, spawn_n, False, backend_options=opts)
    _, kb_per_actor = anyio.run(ours_spawn, spawn_n, True, backend_options=opts)
    started_s, _ = anyio.run(ours_spawn, spawn_n, False, StartedEcho, backend_options=opts)

    print(
        f"bulk tell     ours {ours_bulk_rate:>12,.0f} msg/s   pykka {pykka_bulk_rate:>12,.0f} msg/s"
    )
    print(f"ring hops     ours {ours_hops:>12,.0f} hop/s   pykka {pykka_hops:>12,.0f} hop/s")
    print(f"ring 1 token  ours {ours_hops_1:>12,.0f} hop/s   pykka {pykka_hops_1:>12,.0f} hop/s")
    print(
        f"ask p50/p99   ours {pct(ours_lat, 0.5):8.1f}/{pct(ours_lat, 0.99):.1f} us"
        f"   pykka {pct(pykka_lat, 0.5):8.1f}/{pct(pykka_lat, 0.99):.1f} us"
    )
    print(
        f"spawn {spawn_n}  {spawn_s:.3f} s, {kb_per_actor:.2f} KiB per actor"
        f"   with started(): {started_s:.3f} s"
    )
    print(
        "runtime:"
        f" hops_per_s={ours_hops:.0f}"
        f" hops_vs_pykka={ours_hops / pykka_hops:.2f}"
        f" hops_1token_vs_pykka={ours_hops_1 / pykka_hops_1:.2f}"
        f" bulk_per_s={ours_bulk_rate:.0f}"
        f" bulk_vs_pykka={ours_bulk_rate / pykka_bulk_rate:.2f}"
        f" ask_p50_us={pct(ours_lat, 0.5):.1f}"
        f" ask_p99_us={pct(ours_lat, 0.99):.1f}"
        f" ask_p50_vs_pykka={pct(ours_lat, 0.5) / pct(pykka_lat, 0.5):.2f}"
        f" spawn_10k_s={spawn_s:.3f}"
        f" kb_per_actor={kb_per_actor:.2f}"
        f" spawn_10k_started_s={started_s:.3f}"
    )


if __name__ == "__main__":
    main()
