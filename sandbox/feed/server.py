"""The sandbox signal feed: a python-socketio server on loopback with replay and faults.

Every event gets the next ``seq`` and lands in a bounded ring of already-encoded socket.io
packets. Each connected client has one *pump* task reading that ring from its own cursor:
replay after a resume and live delivery are the same loop, so a client sees every seq in
order, once, with nothing to stitch together. A pump stops pushing while the engine.io
queue of its client is long, so a slow client lags (and may fall off the ring, which it
is told with ``resume_gap``) instead of the server buffering without bound.

Faults (disconnects, stalls, floods, malformed events) and test hooks (publish a known
token, step the generator) are a Python API and the same under HTTP ``/_feed/...``.

What a client sees: socket.io events ``token_event`` and ``price_update`` whose one
argument is the JSON text of `messages.wire` (decode with ``decode_event(name, arg)``).
Connecting with ``auth={"since_seq": N}`` replays every seq > N still in the history, then
follows live (no auth: live only). When N is older than the history the client first gets
``resume_gap`` with ``{"sinceSeq": N, "firstSeq": F}`` and continues from F. Malformed
injections travel outside the seq stream (never replayed) and may use unknown event names
or carry no argument at all, so a consumer wants a ``"*"`` handler taking ``*args``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import msgspec
import socketio
import structlog
from aiohttp import web
from socketio import packet as sio_packet

from messages.wire import (
    SCHEMA_VERSION,
    ChannelCall,
    PriceUpdate,
    TokenEvent,
    WireEvent,
    WireRejected,
    decode_price_update,
    decode_token_event,
    encode,
)
from sandbox.feed.generator import FeedGenerator, Token, base58, format_price
from sandbox.feed.malformed import malformed_events

__all__ = ["CONTROL_PREFIX", "FeedServer", "serve"]

log = structlog.get_logger(__name__)

CONTROL_PREFIX: Final = "/_feed"
_BACKLOG_HIGH: Final = 512
"""Engine.io packets queued for one client before its pump waits for the socket to drain."""
_YIELD_EVERY: Final = 256
_MAX_INJECT: Final = 10_000_000
_EVENT_TYPE: Final = str(sio_packet.EVENT)
_PACKET_ENCODER: Final = msgspec.json.Encoder()


class FeedServer:
    """A generated token-call stream served over socket.io, with replay and fault injection."""

    def __init__(
        self,
        *,
        rate: float = 50.0,
        seed: int = 0,
        history: int = 500_000,
        price_ratio: float = 4.0,
        autostart: bool = True,
        channels: int = 60,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not math.isfinite(rate) or rate < 0:
            raise ValueError("rate must be a finite number of events per second >= 0")
        if history < 1:
            raise ValueError("history must be >= 1")
        self.rate = rate
        self.generator = FeedGenerator(seed=seed, price_ratio=price_ratio, channels=channels)
        self.last_seq = 0
        self.generated: dict[str, int] = {TokenEvent.KIND: 0, PriceUpdate.KIND: 0}
        self.malformed_sent = 0
        self.packets_sent = 0
        self.disconnects = 0
        self._clock = clock
        self._cap = history
        self._ring: list[str] = [""] * history
        self._published: dict[str, Token] = {}
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._appended = asyncio.Event()
        self._unpaused = asyncio.Event()
        if autostart:
            self._unpaused.set()
        self._unstalled = asyncio.Event()
        self._unstalled.set()
        self._stall_until = 0.0
        self._run_task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self.sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
        self.sio.on("connect", self._on_connect)
        self.sio.on("disconnect", self._on_disconnect)
        self.app = web.Application(client_max_size=1024 * 1024)
        self.sio.attach(self.app)
        self._add_routes()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server (what a socket.io client connects to)."""
        return f"http://{self._host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def first_seq(self) -> int:
        """Oldest seq still in the replay history (1 until the ring wraps)."""
        return max(1, self.last_seq - self._cap + 1)

    @property
    def clients(self) -> int:
        return len(self._pumps)

    @property
    def paused(self) -> bool:
        return not self._unpaused.is_set()

    @property
    def stalled(self) -> bool:
        return not self._unstalled.is_set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on loopback (port 0 picks a free port; read it back from `url`)."""
        _require_loopback(host)
        runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self._host, self._port = (host if ":" not in host else f"[{host}]"), int(address[1])
        self._run_task = asyncio.create_task(self._run(), name="feed-generator")
        log.info("feed.started", url=self.url, rate=self.rate, history=self._cap)

    async def stop(self) -> None:
        """Stop generating, drop every client and close the listener."""
        if self._run_task is not None:
            self._run_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._run_task
            self._run_task = None
        await self.disconnect_all()
        for task in list(self._pumps.values()):
            task.cancel()
        self._pumps.clear()
        if self.sio.eio.sockets:
            await self.sio.eio.disconnect()
        await self.sio.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("feed.stopped", last_seq=self.last_seq)

    async def __aenter__(self) -> FeedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- generator control -------------------------------------------------------------

    def pause(self) -> None:
        """Stop the generator (replay, injections and `step` still work)."""
        self._unpaused.clear()

    def resume(self) -> None:
        self._unpaused.set()

    async def step(self, n: int) -> list[WireEvent]:
        """Generate ``n`` events now, whatever the rate or pause state; returns them."""
        _check_count("n", n)
        events: list[WireEvent] = []
        for i in range(n):
            event = self.generator.next_event(self.last_seq + 1, self._clock())
            self._append(event)
            events.append(event)
            if i % 4096 == 4095:
                await asyncio.sleep(0)
        return events

    def stats(self) -> dict[str, Any]:
        """Counters for tests and the control endpoint."""
        return {
            "last_seq": self.last_seq,
            "first_seq": self.first_seq,
            "generated": dict(self.generated),
            "malformed_sent": self.malformed_sent,
            "packets_sent": self.packets_sent,
            "disconnects": self.disconnects,
            "clients": self.clients,
            "paused": self.paused,
            "stalled": self.stalled,
            "rate": self.rate,
            "live_tokens": len(self.generator.live),
        }

    # -- faults ------------------------------------------------------------------------

    async def disconnect_all(self, *, abrupt: bool = False) -> int:
        """Disconnect every client from the server side; returns how many.

        ``abrupt`` closes the engine.io transport (like a dropped connection) instead of
        sending a socket.io DISCONNECT.
        """
        sids = list(self._pumps)
        for sid in sids:
            if abrupt:
                eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
                if eio_sid is not None:
                    await self.sio.eio.disconnect(eio_sid)
            else:
                await self.sio.disconnect(sid)
            self._stop_pump(sid)
        self.disconnects += len(sids)
        if sids:
            log.info("feed.disconnect_all", clients=len(sids), abrupt=abrupt)
        return len(sids)

    async def stall(self, seconds: float, *, wait: bool = False) -> None:
        """Emit nothing for ``seconds`` (no generation, no delivery); returns at once
        unless ``wait``."""
        if not math.isfinite(seconds) or seconds < 0 or seconds > 86_400:
            raise ValueError("seconds must be between 0 and 86400")
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        if until > self._stall_until:
            self._stall_until = until
            self._unstalled.clear()
            loop.call_at(until, self._stall_timer)
            log.info("feed.stall", seconds=seconds)
        if wait:
            await self._unstalled.wait()

    def end_stall(self) -> None:
        """End a stall now (the generator and every client's delivery pick up again)."""
        self._stall_until = 0.0
        if not self._unstalled.is_set():
            self._unstalled.set()
            log.info("feed.stall_ended")

    async def flood_prices(self, n: int, tokens: int) -> dict[str, PriceUpdate]:
        """Append ``n`` price updates over ``tokens`` tokens at once; returns the newest per
        token key. Live tokens are used first, then price-only tokens nobody called."""
        _check_count("n", n)
        _check_count("tokens", tokens, minimum=1)
        chosen = self.generator.flood_tokens(tokens)
        newest: dict[str, PriceUpdate] = {}
        for i in range(n):
            token = chosen[i % len(chosen)]
            update = self.generator.price_update(self.last_seq + 1, self._clock(), token)
            self._append(update)
            newest[update.token_key] = update
            if i % 4096 == 4095:
                await asyncio.sleep(0)
        log.info("feed.flood", n=n, tokens=len(chosen), last_seq=self.last_seq)
        return newest

    async def send_malformed(self, count: int) -> list[str]:
        """Send ``count`` bad events of assorted kinds to every client (outside the seq
        stream, never replayed); returns the kind label of each, in order."""
        _check_count("count", count)
        sent: list[str] = []
        for label, event_name, payload in malformed_events(count):
            await self.sio.emit(event_name, payload)
            sent.append(label)
        self.malformed_sent += len(sent)
        log.info("feed.malformed", count=len(sent))
        return sent

    # -- publishing known events -------------------------------------------------------

    async def publish_token_event(
        self,
        *,
        chain: str,
        token_address: str,
        symbol: str,
        fdv: float,
        calls: Sequence[Mapping[str, Any] | ChannelCall] | None = None,
        name: str | None = None,
        price_usd: str | None = None,
        market_cap: float | None = None,
        liquidity_usd: float | None = None,
        volume_h24: float | None = None,
        pair_address: str | None = None,
        event_id: str | None = None,
        track: bool = False,
    ) -> TokenEvent:
        """Emit a token event for a token the caller chooses (validated; `WireRejected` if
        not). Calls default to one call by the generator's first channel at ``fdv``.
        ``track`` lets the generator walk its price and add repeat calls afterwards."""
        token = self._known_token(chain, token_address, symbol, fdv, pair_address)
        now = self._clock()
        event = TokenEvent(
            v=SCHEMA_VERSION,
            event_id=event_id or uuid.uuid4().hex,
            seq=self.last_seq + 1,
            emitted_at=now,
            chain_id=chain,
            token_address=token_address,
            pair_address=token.pair_address,
            symbol=symbol,
            name=name if name is not None else token.name,
            price_usd=price_usd or format_price(fdv / token.supply),
            fdv=fdv,
            market_cap=market_cap if market_cap is not None else fdv * token.circulating,
            liquidity_usd=(
                liquidity_usd if liquidity_usd is not None else fdv * token.liquidity_ratio
            ),
            volume_h24=volume_h24 if volume_h24 is not None else token.volume_h24,
            calls=tuple(self._calls(calls, fdv, now)),
        )
        checked = decode_token_event(encode(event))
        token.fdv = fdv
        token.calls = list(checked.calls)
        token.callers = {c.channel_id for c in checked.calls}
        if track:
            self.generator.adopt(token)
        self._append(checked)
        return checked

    async def publish_price(
        self, chain: str, token_address: str, fdv: float, price_usd: str | None = None
    ) -> PriceUpdate:
        """Emit a price update with the given FDV for any token (validated)."""
        token = self._known_token(chain, token_address, "X", fdv, None)
        update = PriceUpdate(
            v=SCHEMA_VERSION,
            event_id=uuid.uuid4().hex,
            seq=self.last_seq + 1,
            emitted_at=self._clock(),
            chain_id=chain,
            token_address=token_address,
            pair_address=token.pair_address,
            price_usd=price_usd or format_price(fdv / token.supply),
            fdv=fdv,
            market_cap=fdv * token.circulating,
            liquidity_usd=fdv * token.liquidity_ratio,
            volume_h24=token.volume_h24,
        )
        checked = decode_price_update(encode(update))
        token.fdv = fdv
        self._append(checked)
        return checked

    # -- internals ---------------------------------------------------------------------

    def _known_token(
        self, chain: str, address: str, symbol: str, fdv: float, pair_address: str | None
    ) -> Token:
        key = f"{chain}:{address}"
        token = self.generator.token(key) or self._published.get(key)
        if token is None:
            digest = hashlib.sha256(key.encode()).digest()
            pair = pair_address or (
                base58(int.from_bytes(digest, "big"))
                if chain == "solana"
                else "0x" + digest[:20].hex()
            )
            token = Token(
                chain=chain,
                address=address,
                pair_address=pair,
                symbol=symbol,
                name=symbol.title(),
                supply=1e9,
                circulating=1.0,
                fdv=fdv,
                launch_fdv=fdv if fdv > 0 else 1.0,
                liquidity_ratio=0.15,
                volume_h24=fdv * 0.5,
                target=1.0,
                pump_steps=1,
                lifetime=1000,
            )
            self._published[key] = token
        return token

    def _calls(
        self,
        calls: Sequence[Mapping[str, Any] | ChannelCall] | None,
        fdv: float,
        now: float,
    ) -> list[ChannelCall]:
        channels = {c.channel_id: c for c in self.generator.channels}
        first = self.generator.channels[0]
        if not calls:
            calls = [{}]
        out: list[ChannelCall] = []
        for item in calls:
            if isinstance(item, ChannelCall):
                out.append(item)
                continue
            spec = {_snake(k): v for k, v in item.items()}
            unknown = set(spec) - {
                "channel_id",
                "username",
                "message_id",
                "called_at",
                "fdv_at_call",
            }
            if unknown:
                raise WireRejected("invalid_value", f"$.calls: unknown keys {sorted(unknown)}")
            channel = channels.get(spec.get("channel_id", first.channel_id))
            if channel is not None and "message_id" not in spec:
                channel.next_message_id += 1
            out.append(
                ChannelCall(
                    channel_id=spec.get("channel_id", first.channel_id),
                    username=spec.get("username", channel.username if channel else "channel"),
                    message_id=spec.get(
                        "message_id", channel.next_message_id if channel else len(out) + 1
                    ),
                    called_at=spec.get("called_at", now),
                    fdv_at_call=spec.get("fdv_at_call", fdv),
                )
            )
        return out

    def _append(self, event: WireEvent) -> None:
        seq = event.seq
        if seq != self.last_seq + 1:
            raise RuntimeError(f"seq {seq} does not follow {self.last_seq}")
        text = encode(event).decode()
        self._ring[seq % self._cap] = _packet(event.KIND, text)
        self.last_seq = seq
        self.generated[event.KIND] += 1
        self._appended.set()

    async def _run(self) -> None:
        """Produce ``rate`` events per second while neither paused nor stalled; after a
        pause or when hopelessly behind, restart the schedule instead of bursting."""
        loop = asyncio.get_running_loop()
        while True:
            await self._unpaused.wait()
            await self._unstalled.wait()
            if self.rate <= 0:
                await asyncio.sleep(0.05)
                continue
            started = loop.time()
            produced = 0
            while self._unpaused.is_set() and self._unstalled.is_set() and self.rate > 0:
                due = int((loop.time() - started) * self.rate) - produced
                if due > max(self.rate, 1.0):
                    produced += due - 1
                    due = 1
                for _ in range(due):
                    self._append(self.generator.next_event(self.last_seq + 1, self._clock()))
                produced += max(due, 0)
                ahead = (produced + 1) / self.rate - (loop.time() - started)
                await asyncio.sleep(min(max(ahead, 0.001), 0.05))

    def _stall_timer(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() + 1e-6 >= self._stall_until:
            self.end_stall()
        else:
            loop.call_at(self._stall_until, self._stall_timer)

    async def _on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        since = _since_seq(auth)
        start = self.last_seq + 1 if since is None else since + 1
        self._pumps[sid] = asyncio.create_task(self._pump(sid, start), name=f"feed-pump-{sid}")
        log.info("feed.client_connected", sid=sid, since_seq=since, last_seq=self.last_seq)

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        self._stop_pump(sid)
        log.info("feed.client_disconnected", sid=sid, reason=str(reason))

    def _stop_pump(self, sid: str) -> None:
        task = self._pumps.pop(sid, None)
        if task is not None:
            task.cancel()

    async def _pump(self, sid: str, next_seq: int) -> None:
        """Deliver seq ``next_seq`` onward to one client, in order, then follow live."""
        manager = self.sio.manager
        for _ in range(2000):
            if manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.001)
        eio_sid = manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None:
            return
        send = self.sio.eio.send
        unstalled = self._unstalled
        while True:
            await unstalled.wait()
            self._appended.clear()
            if next_seq > self.last_seq:
                await self._appended.wait()
                continue
            first = self.first_seq
            if next_seq < first:
                gap = {"sinceSeq": next_seq - 1, "firstSeq": first}
                await send(eio_sid, _packet("resume_gap", gap))
                log.info("feed.resume_gap", sid=sid, **gap)
                next_seq = first
            burst = 0
            while next_seq <= self.last_seq and unstalled.is_set():
                if next_seq < self.first_seq:
                    break
                await send(eio_sid, self._ring[next_seq % self._cap])
                self.packets_sent += 1
                next_seq += 1
                burst += 1
                if burst % _YIELD_EVERY == 0:
                    await self._drain(eio_sid)

    async def _drain(self, eio_sid: str) -> None:
        socket_ = self.sio.eio.sockets.get(eio_sid)
        queue = getattr(socket_, "queue", None)
        await asyncio.sleep(0)
        while queue is not None and queue.qsize() > _BACKLOG_HIGH:  # noqa: ASYNC110 - no drain signal
            await asyncio.sleep(0.001)

    # -- HTTP control ------------------------------------------------------------------

    def _add_routes(self) -> None:
        p = CONTROL_PREFIX
        self.app.router.add_get(f"{p}/stats", self._h_stats)
        for name, handler in {
            "disconnect": self._h_disconnect,
            "stall": self._h_stall,
            "unstall": self._h_unstall,
            "flood": self._h_flood,
            "malformed": self._h_malformed,
            "pause": self._h_pause,
            "resume": self._h_resume,
            "step": self._h_step,
            "token": self._h_token,
            "price": self._h_price,
        }.items():
            self.app.router.add_post(f"{p}/{name}", _guarded(handler))

    async def _h_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _h_disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"disconnected": await self.disconnect_all(abrupt=_bool(params, "abrupt"))}

    async def _h_stall(self, params: dict[str, Any]) -> dict[str, Any]:
        await self.stall(_number(params, "seconds"))
        return {"stalled": True}

    async def _h_unstall(self, params: dict[str, Any]) -> dict[str, Any]:
        self.end_stall()
        return {"stalled": False}

    async def _h_flood(self, params: dict[str, Any]) -> dict[str, Any]:
        newest = await self.flood_prices(_int(params, "n"), _int(params, "tokens", 100))
        return {"last_seq": self.last_seq, "tokens": {k: v.fdv for k, v in newest.items()}}

    async def _h_malformed(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"sent": await self.send_malformed(_int(params, "count", 10))}

    async def _h_pause(self, params: dict[str, Any]) -> dict[str, Any]:
        self.pause()
        return {"paused": True}

    async def _h_resume(self, params: dict[str, Any]) -> dict[str, Any]:
        self.resume()
        return {"paused": False}

    async def _h_step(self, params: dict[str, Any]) -> dict[str, Any]:
        events = await self.step(_int(params, "n", 1))
        return {"last_seq": self.last_seq, "stepped": len(events)}

    async def _h_token(self, params: dict[str, Any]) -> dict[str, Any]:
        allowed = {
            "chain", "token_address", "symbol", "fdv", "calls", "name", "price_usd",
            "market_cap", "liquidity_usd", "volume_h24", "pair_address", "event_id", "track",
        }  # fmt: skip
        kwargs = {_snake(k): v for k, v in params.items()}
        unknown = set(kwargs) - allowed
        if unknown:
            raise _BadRequest(f"unknown parameters {sorted(unknown)}")
        for required in ("chain", "token_address", "symbol", "fdv"):
            if required not in kwargs:
                raise _BadRequest(f"{required} is required")
        if not isinstance(kwargs.get("calls", []), list):
            raise _BadRequest("calls must be a list of objects")
        if not all(isinstance(c, dict) for c in kwargs.get("calls", [])):
            raise _BadRequest("calls must be a list of objects")
        event = await self.publish_token_event(**kwargs)
        return {"event": json.loads(encode(event))}

    async def _h_price(self, params: dict[str, Any]) -> dict[str, Any]:
        kwargs = {_snake(k): v for k, v in params.items()}
        for required in ("chain", "token_address", "fdv"):
            if required not in kwargs:
                raise _BadRequest(f"{required} is required")
        update = await self.publish_price(
            kwargs["chain"], kwargs["token_address"], kwargs["fdv"], kwargs.get("price_usd")
        )
        return {"event": json.loads(encode(update))}


class _BadRequest(Exception):
    pass


def _guarded(
    handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Parse query + JSON body into params; client mistakes answer 400, never 500."""

    async def wrapped(request: web.Request) -> web.Response:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return web.json_response({"error": "body is not JSON"}, status=400)
            if not isinstance(body, dict):
                return web.json_response({"error": "body must be a JSON object"}, status=400)
            params.update(body)
        try:
            return web.json_response(await handler(params))
        except WireRejected as exc:
            return web.json_response({"error": exc.reason, "detail": exc.detail}, status=400)
        except (_BadRequest, ValueError, TypeError, OverflowError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return wrapped


def _int(params: Mapping[str, Any], name: str, default: int | None = None) -> int:
    raw = params.get(name, default)
    if raw is None:
        raise _BadRequest(f"{name} is required")
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        raise _BadRequest(f"{name} must be an integer") from None
    _check_count(name, value)
    return value


def _number(params: Mapping[str, Any], name: str) -> float:
    try:
        return float(params[name])
    except KeyError:
        raise _BadRequest(f"{name} is required") from None
    except (TypeError, ValueError):
        raise _BadRequest(f"{name} must be a number") from None


def _bool(params: Mapping[str, Any], name: str) -> bool:
    raw = params.get(name, False)
    return raw is True or (isinstance(raw, str) and raw.lower() in {"1", "true", "yes"})


def _check_count(name: str, value: int, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if not minimum <= value <= _MAX_INJECT:
        raise ValueError(f"{name} must be between {minimum} and {_MAX_INJECT}")


def _snake(key: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in key)


def _since_seq(auth: Any) -> int | None:
    """The ``since_seq`` a resuming client sends in its auth payload (None: live only)."""
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise socketio.exceptions.ConnectionRefusedError("auth must be an object")
    since = auth.get("since_seq")
    if since is None:
        return None
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise socketio.exceptions.ConnectionRefusedError("since_seq must be an integer >= 0")
    return since


def _packet(event_name: str, payload: Any) -> str:
    """One socket.io EVENT packet (``2["name",payload]``), encoded once and reused for every
    client and every replay; msgspec does what socket.io's own encoder does, much faster."""
    return _EVENT_TYPE + _PACKET_ENCODER.encode([event_name, payload]).decode()


def _require_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the sandbox feed binds loopback only, not {host!r}")


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    rate: float = 50.0,
    seed: int = 0,
    history: int = 500_000,
    price_ratio: float = 4.0,
    on_ready: Callable[[FeedServer], None] | None = None,
) -> None:
    """Run a feed until cancelled (``callwatch sandbox feed`` and ``python -m sandbox.feed``)."""
    server = FeedServer(rate=rate, seed=seed, history=history, price_ratio=price_ratio)
    await server.start(host, port)
    log.info("feed.serving", url=server.url, control=f"{server.url}{CONTROL_PREFIX}/stats")
    if on_ready is not None:
        on_ready(server)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
