"""The sandbox feed against the real python-socketio client: order, resume, faults."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
import socketio

from messages.wire import (
    PriceUpdate,
    TokenEvent,
    WireEvent,
    WireRejected,
    decode_event,
    decode_token_event,
    encode,
)
from sandbox.feed import MALFORMED_KINDS, FeedGenerator, FeedServer

pytestmark = pytest.mark.anyio

FIXED_NOW = 1_750_000_000.0
SOLANA_ADDRESS = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
EVM_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")


class Client:
    """A real socket.io client that records what it is sent."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.received: list[tuple[str, tuple[Any, ...]]] = []
        self.disconnected = asyncio.Event()
        self._changed = asyncio.Event()
        self.sio.on("*", self._on_any)
        self.sio.on("disconnect", self._on_disconnect)

    async def _on_any(self, event: str, *args: Any) -> None:
        self.received.append((event, args))
        self._changed.set()

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnected.set()

    async def connect(self, url: str, since_seq: int | None = None, **kw: Any) -> None:
        auth = None if since_seq is None else {"since_seq": since_seq}
        kw.setdefault("transports", ["websocket"])
        await self.sio.connect(url, auth=auth, wait_timeout=5, **kw)

    async def wait_count(self, n: int, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while len(self.received) < n:
                self._changed.clear()
                await self._changed.wait()

    def events(self) -> list[WireEvent]:
        return [decode_event(name, args[0]) for name, args in self.received]

    def seqs(self) -> list[int]:
        return [e.seq for e in self.events()]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client()
    yield c
    if c.sio.connected:
        await c.sio.disconnect()


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    server = FeedServer(rate=0, seed=7, autostart=False, clock=lambda: FIXED_NOW)
    await server.start()
    yield server
    await server.stop()


async def test_live_events_arrive_in_seq_order(client: Client) -> None:
    server = FeedServer(rate=400, seed=1)
    await server.start()
    try:
        await client.connect(server.url)
        await client.wait_count(60)
    finally:
        await server.stop()
    seqs = client.seqs()
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    kinds = {name for name, _ in client.received}
    assert kinds == {"token_event", "price_update"}


async def test_resume_replays_exactly_the_missing_events(feed: FeedServer) -> None:
    first, second = Client(), Client()
    await feed.step(100)
    await first.connect(feed.url, since_seq=0, transports=["polling", "websocket"])
    await first.wait_count(100)
    assert first.seqs() == list(range(1, 101))

    await second.connect(feed.url, since_seq=40)
    await second.wait_count(60)
    await feed.step(10)
    await second.wait_count(70)
    await first.wait_count(110)
    assert second.seqs() == list(range(41, 111))
    assert first.seqs() == list(range(1, 111))
    assert [e.event_id for e in second.events()] == [e.event_id for e in first.events()[40:]]
    await first.sio.disconnect()
    await second.sio.disconnect()


async def test_without_since_seq_a_client_gets_only_new_events(
    feed: FeedServer, client: Client
) -> None:
    await feed.step(30)
    await client.connect(feed.url)
    await feed.step(5)
    await client.wait_count(5)
    assert client.seqs() == [31, 32, 33, 34, 35]


async def test_resume_older_than_history_reports_a_gap(client: Client) -> None:
    server = FeedServer(rate=0, seed=3, history=50, autostart=False)
    await server.start()
    try:
        await server.step(120)
        assert server.first_seq == 71
        await client.connect(server.url, since_seq=10)
        await client.wait_count(51)
    finally:
        await server.stop()
    name, args = client.received[0]
    assert (name, args[0]) == ("resume_gap", {"sinceSeq": 10, "firstSeq": 71})
    rest = [decode_event(n, a[0]).seq for n, a in client.received[1:]]
    assert rest == list(range(71, 121))


async def test_bad_auth_is_refused(feed: FeedServer, client: Client) -> None:
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            feed.url, auth={"since_seq": "ten"}, transports=["websocket"], wait_timeout=5
        )


@pytest.mark.parametrize("abrupt", [False, True])
async def test_server_side_disconnect_is_seen_by_the_client(
    feed: FeedServer, client: Client, abrupt: bool
) -> None:
    await client.connect(feed.url, since_seq=0)
    await feed.step(3)
    await client.wait_count(3)
    assert feed.clients == 1
    assert await feed.disconnect_all(abrupt=abrupt) == 1
    with anyio.fail_after(5):
        await client.disconnected.wait()
    assert feed.clients == 0
    # A reconnecting client resumes where it left off.
    again = Client()
    await feed.step(2)
    await again.connect(feed.url, since_seq=client.seqs()[-1])
    await again.wait_count(2)
    assert again.seqs() == [4, 5]
    await again.sio.disconnect()


async def test_flood_arrives_in_full_with_the_newest_price_last(
    feed: FeedServer, client: Client
) -> None:
    await client.connect(feed.url)
    newest = await feed.flood_prices(5_000, 50)
    assert len(newest) == 50
    await client.wait_count(5_000)
    events = client.events()
    assert all(isinstance(e, PriceUpdate) for e in events)
    assert [e.seq for e in events] == list(range(1, 5_001))
    last: dict[str, WireEvent] = {}
    for event in events:
        last[event.token_key] = event
    assert last == newest


async def test_malformed_events_arrive_and_are_each_rejected(
    feed: FeedServer, client: Client
) -> None:
    await client.connect(feed.url)
    labels = await feed.send_malformed(len(MALFORMED_KINDS) + 2)
    await client.wait_count(len(labels))
    assert set(labels) == set(MALFORMED_KINDS)
    for label, (name, args) in zip(labels, client.received, strict=True):
        expected_name, _, reason = MALFORMED_KINDS[label]
        assert name == expected_name
        with pytest.raises(WireRejected) as info:
            decode_event(name, args[0] if args else None)  # type: ignore[arg-type]
        assert info.value.reason == reason, label
    assert feed.last_seq == 0
    assert feed.malformed_sent == len(labels)


async def test_stall_holds_delivery_until_it_ends(feed: FeedServer, client: Client) -> None:
    await client.connect(feed.url)
    await feed.stall(60)
    await feed.step(5)
    await anyio.sleep(0.1)
    assert client.received == []
    assert feed.stats()["stalled"] is True
    feed.end_stall()
    await client.wait_count(5)
    assert client.seqs() == [1, 2, 3, 4, 5]


async def test_pause_stops_the_generator_and_resume_restarts_it() -> None:
    server = FeedServer(rate=2_000, seed=2)
    await server.start()
    try:
        with anyio.fail_after(5):
            while server.last_seq < 10:
                await anyio.sleep(0.01)
        server.pause()
        await anyio.sleep(0.02)
        paused_at = server.last_seq
        await anyio.sleep(0.1)
        assert server.last_seq == paused_at
        server.resume()
        with anyio.fail_after(5):
            while server.last_seq <= paused_at:
                await anyio.sleep(0.01)
    finally:
        await server.stop()


async def test_published_token_and_price_arrive_as_given(feed: FeedServer, client: Client) -> None:
    await client.connect(feed.url)
    address = "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr"
    token = await feed.publish_token_event(
        chain="solana",
        token_address=address,
        symbol="KNOWN",
        fdv=100_000.0,
        calls=[
            {"channel_id": 42, "username": "known_calls", "fdv_at_call": 90_000.0},
            {"channelId": 43, "username": "other_calls"},
        ],
    )
    price = await feed.publish_price("solana", address, 1_250_000.0)
    await client.wait_count(2)
    got_token, got_price = client.events()
    assert got_token == token
    assert got_price == price
    assert got_token.token_key == f"solana:{address}"
    assert [c.channel_id for c in token.calls] == [42, 43]
    assert token.calls[1].fdv_at_call == 100_000.0
    assert got_price.fdv == 1_250_000.0
    assert got_price.pair_address == got_token.pair_address
    with pytest.raises(WireRejected):
        await feed.publish_token_event(chain="solana", token_address=address, symbol="X", fdv=-1.0)
    assert feed.last_seq == 2


async def test_step_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[bytes]:
        generator = FeedGenerator(seed=seed)
        return [encode(generator.next_event(seq, FIXED_NOW)) for seq in range(1, 401)]

    assert run(5) == run(5)
    assert run(5) != run(6)
    a = FeedServer(rate=0, seed=5, autostart=False, clock=lambda: FIXED_NOW)
    b = FeedServer(rate=0, seed=5, autostart=False, clock=lambda: FIXED_NOW)
    events_a, events_b = await a.step(400), await b.step(400)
    assert [encode(e) for e in events_a] == [encode(e) for e in events_b] == run(5)
    assert a.last_seq == 400


def test_generated_stream_looks_like_a_real_feed() -> None:
    generator = FeedGenerator(seed=11, price_ratio=4.0)
    events = [generator.next_event(seq, FIXED_NOW + seq) for seq in range(1, 20_001)]
    for event in events[:500]:
        assert decode_event(event.KIND, encode(event)) == event
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert 0.15 < len(tokens) / len(events) < 0.25
    assert {e.chain_id for e in tokens} == {"solana", "ethereum", "base", "bsc"}
    for e in tokens:
        pattern = SOLANA_ADDRESS if e.chain_id == "solana" else EVM_ADDRESS
        assert pattern.match(e.token_address), e.token_address
    assert any(e.token_address != e.token_address.lower() for e in tokens)
    assert len({e.event_id for e in events}) == len(events)
    # Repeat events: same token, growing calls from new channels.
    by_token: dict[str, list[TokenEvent]] = {}
    for e in tokens:
        by_token.setdefault(e.token_key, []).append(e)
    repeated = [evs for evs in by_token.values() if len(evs) > 1]
    assert len(repeated) > 50
    for evs in repeated:
        sizes = [len(e.calls) for e in evs]
        assert sizes == list(range(sizes[0], sizes[0] + len(sizes)))
        channels = [c.channel_id for c in evs[-1].calls]
        assert len(channels) == len(set(channels))
    # Prices walk, and some tokens pump past 2x, some past 10x, of their first call.
    first_fdv = {key: evs[0].calls[0].fdv_at_call for key, evs in by_token.items()}
    peak: dict[str, float] = {}
    for update in events:
        if isinstance(update, PriceUpdate) and update.token_key in first_fdv:
            multiple = update.fdv / first_fdv[update.token_key]
            peak[update.token_key] = max(peak.get(update.token_key, 0.0), multiple)
    assert sum(m >= 2 for m in peak.values()) >= 20
    assert any(m >= 10 for m in peak.values())
    assert sum(m < 1 for m in peak.values()) > sum(m >= 2 for m in peak.values())
    # Channels differ in how often their first calls pump.
    rates = sorted(c.hit_rate for c in generator.channels)
    assert len(generator.channels) == 60
    assert rates[-1] > 2 * rates[0]


async def test_http_control_endpoints(feed: FeedServer, client: Client) -> None:
    await client.connect(feed.url)
    base = f"{feed.url}/_feed"
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: Any = None) -> tuple[int, Any]:
            async with http.post(f"{base}/{path}", json=body) as resp:
                return resp.status, await resp.json()

        assert await post("step", {"n": 3}) == (200, {"last_seq": 3, "stepped": 3})
        status, body = await post(
            "token",
            {"chain": "base", "tokenAddress": "0x" + "ab" * 20, "symbol": "HTTP", "fdv": 5e5},
        )
        assert status == 200
        assert decode_token_event(body["event"]).seq == 4
        status, body = await post("price", {"chain": "base", "token_address": "0x" + "ab" * 20})
        assert status == 400
        assert "fdv" in body["error"]
        status, body = await post("flood", {"n": 10, "tokens": 2})
        assert status == 200
        assert body["last_seq"] == 14
        status, body = await post("malformed", {"count": 3})
        assert (status, body["sent"]) == (200, ["bad_json", "wrong_type", "negative_fdv"])
        assert (await post("step", {"n": "many"}))[0] == 400
        assert (await post("step", {"n": -1}))[0] == 400
        assert (await post("token", {"chain": "solana", "fdv": 1}))[0] == 400
        status, body = await post(
            "token", {"chain": "solana", "token_address": "", "symbol": "X", "fdv": 1}
        )
        assert (status, body["error"]) == (400, "invalid_value")
        async with http.post(f"{base}/step", data=b"{nope") as resp:
            assert resp.status == 400
        assert (await post("stall", {"seconds": 30}))[0] == 200
        assert (await post("unstall"))[0] == 200
        assert (await post("pause"))[0] == 200
        assert (await post("resume"))[0] == 200
        await client.wait_count(14 + 3)
        async with http.get(f"{base}/stats") as resp:
            stats = await resp.json()
        assert stats["last_seq"] == 14
        assert stats["clients"] == 1
        assert stats["malformed_sent"] == 3
        assert (await post("disconnect"))[1] == {"disconnected": 1}
        with anyio.fail_after(5):
            await client.disconnected.wait()


async def test_only_loopback_is_served() -> None:
    server = FeedServer(rate=0, autostart=False)
    with pytest.raises(ValueError, match="loopback"):
        await server.start("0.0.0.0")
