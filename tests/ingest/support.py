"""Test actors and checks for the ingest actor: recording targets, a gate, the tree, and
the exactly-once accounting of a stream against what the targets saw."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio

from actors.ingest import Ingest, ingest_mailbox
from actors.store.handle import StoreHandle
from actors.store.redis_owner import RedisOwner
from messages.ingest import IngestReport, IngestStatus
from messages.settings import FeedSettings, StoreSettings
from messages.status import ActorStatus
from messages.wire import PriceUpdate, TokenEvent, WireEvent
from runtime import Actor, MailboxSpec
from sandbox.feed import FeedServer
from supervisors import Backoff, ChildSpec, Strategy, Tree, supervisor, worker

FAST_RESTARTS = Backoff(initial=0.02, maximum=0.2, jitter=0.0, reset_after=30.0)


async def until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll an expensive ``condition`` every ``interval`` (not in a spin, which would take
    the CPU from the socket.io client under test); fail after ``timeout``."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(interval)


class Gate:
    """Holds a `Recorder` before it records each message: open (the default), closed, or
    letting a given number of messages through."""

    def __init__(self) -> None:
        self._permits: int | None = None
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self._permits = 0

    def open(self) -> None:
        self._permits = None
        self._notify()

    def allow(self, n: int) -> None:
        self._permits = (self._permits or 0) + n
        self._notify()

    async def wait(self) -> None:
        while self._permits == 0:
            await self._changed.wait()
        if self._permits is not None:
            self._permits -= 1


class Producer:
    """Steps the feed like a live stream (``batch`` events every ``interval`` seconds) and
    keeps every event it produced: the ground truth the targets are checked against."""

    def __init__(self, feed: FeedServer, batch: int = 10, interval: float = 0.01) -> None:
        self.feed = feed
        self.batch = batch
        self.interval = interval
        self.events: list[WireEvent] = []
        self._stop = anyio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            self.events += await self.feed.step(self.batch)
            with anyio.move_on_after(self.interval):
                await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


class Recorder(Actor):
    """Stands in for the filter router / multipliers: keeps every event it is told."""

    def __init__(self, sink: list[WireEvent], gate: Gate | None = None) -> None:
        self.sink = sink
        self.gate = gate

    async def receive(self, message: Any) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(message, TokenEvent | PriceUpdate):
            self.sink.append(message)
        return None


def ingest_tree(
    handle: StoreHandle,
    url: str,
    tokens: list[WireEvent],
    prices: list[WireEvent],
    *,
    capacity: int = 10_000,
    token_gate: Gate | None = None,
    token_capacity: int = 64,
    with_redis: bool = True,
    token_targets: tuple[str, ...] = ("tokens",),
) -> ChildSpec:
    """store redis owner (real), two recording targets, the ingest actor; ``one_for_one``."""
    children: list[ChildSpec] = []
    if with_redis:
        children.append(
            worker("redis", RedisOwner, store=handle, settings=StoreSettings(call_timeout=1.0))
        )
    children += [
        worker(
            "tokens",
            Recorder,
            mailbox=MailboxSpec(capacity=token_capacity),
            sink=tokens,
            gate=token_gate,
        ),
        worker("prices", Recorder, mailbox=MailboxSpec(capacity=200_000), sink=prices),
        worker(
            "ingest",
            Ingest,
            mailbox=ingest_mailbox(capacity),
            store=handle,
            url=url,
            token_targets=token_targets,
            price_targets=("prices",),
            settings=FeedSettings(url=url, connect_timeout=5.0, dedup_size=50_000),
            save_interval=0.05,
        ),
    ]
    return supervisor(
        "root",
        children,
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=20,
        period=30.0,
        backoff=FAST_RESTARTS,
    )


def node(tree: Tree, name: str) -> ActorStatus:
    found = tree.status().find(f"root/{name}")
    assert found is not None
    return found


async def report(tree: Tree) -> IngestReport:
    answer = await tree.lookup("ingest").ask(IngestStatus(), timeout=10.0)
    assert isinstance(answer, IngestReport)
    return answer


def complete(events: list[WireEvent], tokens: list[WireEvent], prices: list[WireEvent]) -> bool:
    """Every token event and each token's newest price update has reached its target."""
    token_seqs = {e.seq for e in events if isinstance(e, TokenEvent)}
    if len(tokens) < len(token_seqs):
        return False
    newest: dict[str, int] = {}
    for e in events:
        if isinstance(e, PriceUpdate):
            newest[e.token_key] = e.seq
    seen = {e.seq for e in prices}
    return token_seqs <= {e.seq for e in tokens} and set(newest.values()) <= seen


def check_exactly_once(
    events: list[WireEvent], tokens: list[WireEvent], prices: list[WireEvent]
) -> int:
    """What the targets saw is the stream, each ``seq`` once: every token event in order,
    and every price update either seen or superseded by a newer one of its token that was
    seen (the mailbox's coalescing). Returns how many price updates were superseded."""
    seen = [e.seq for e in tokens] + [e.seq for e in prices]
    twice = sorted(s for s, n in Counter(seen).items() if n > 1)
    assert not twice, f"seqs processed more than once: {twice[:20]}"
    assert all(isinstance(e, TokenEvent) for e in tokens)
    assert all(isinstance(e, PriceUpdate) for e in prices)
    by_seq = {e.seq: e for e in events}
    assert set(seen) <= set(by_seq), "a target saw a seq the feed never sent"
    expected_tokens = [e.seq for e in events if isinstance(e, TokenEvent)]
    assert [e.seq for e in tokens] == expected_tokens, "token events missing or out of order"
    last: dict[str, int] = {}
    for e in prices:
        assert isinstance(e, PriceUpdate)
        assert e.seq > last.get(e.token_key, 0), f"price updates of {e.token_key} out of order"
        last[e.token_key] = e.seq
    seen_set = set(seen)
    superseded = 0
    for e in events:
        if isinstance(e, PriceUpdate) and e.seq not in seen_set:
            assert last.get(e.token_key, 0) > e.seq, f"price update seq {e.seq} lost"
            superseded += 1
    newest: dict[str, int] = {}
    for e in events:
        if isinstance(e, PriceUpdate):
            newest[e.token_key] = e.seq
    assert newest == last, "a token's newest price update was not processed"
    return superseded
