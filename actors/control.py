"""The control server: HTTP on loopback for operators and their tools.

``GET /status`` (the tree snapshot and health as JSON), ``GET /metrics`` (Prometheus),
``GET /livez`` (the event loop answers in time), ``GET /readyz`` (Redis, PostgreSQL,
feed, Telegram), ``POST /admin`` (admin commands, token-protected). Binding anywhere
but loopback requires a token; client mistakes get 4xx, never 5xx.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY

from messages.settings import Secret
from runtime import Actor
from runtime.metrics import TreeCollector

Probe = Callable[[], Awaitable[bool]]
AdminHandler = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
HealthView = Callable[[], Mapping[str, Any]]

MAX_BODY = 64 * 1024
LAG_LIMIT_S = 1.0


class ControlConfigError(Exception):
    """The control server would be exposed beyond loopback without a token."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: Secret | None) -> None:
    """Refuse a non-loopback bind without a token (called by ``callwatch run`` too)."""
    if not is_loopback(host) and not token:
        raise ControlConfigError(
            f"control server bound to {host} needs a token (CALLWATCH_CONTROL_TOKEN)"
        )


class Control(Actor):
    """Serves the control API for the tree it lives in."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8787,
        token: Secret | None = None,
        probes: Mapping[str, Probe] | None = None,
        ready_actors: Mapping[str, str] | None = None,
        admin: AdminHandler | None = None,
        health: HealthView | None = None,
        on_bound: Callable[[str], None] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        check_exposure(host, token)
        self.host = host
        self.port = port
        self.token = token
        self.probes = dict(probes or {})
        self.ready_actors = dict(ready_actors or {})
        """Check name -> actor name: ready while that actor runs (connection owners crash
        when their connection breaks, so running means connected)."""
        self.admin = admin
        self.health = health
        self.on_bound = on_bound
        self.registry = registry if registry is not None else DEFAULT_REGISTRY
        self.url = ""
        self.loop_lag = 0.0
        self._runner: web.AppRunner | None = None
        self._collector: TreeCollector | None = None

    async def started(self) -> None:
        self._collector = TreeCollector(self.ctx.system)
        self.registry.register(self._collector)
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/status", self._status),
                web.get("/metrics", self._metrics),
                web.get("/livez", self._livez),
                web.get("/readyz", self._readyz),
                web.post("/admin", self._admin),
            ]
        )
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        port = self.port
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://{self.host}:{port}"
        self.ctx.log.info("control.listening", url=self.url)
        if self.on_bound is not None:
            self.on_bound(self.url)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._measure_lag)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def _measure_lag(self) -> None:
        while True:
            start = time.perf_counter()
            await anyio.sleep(0.1)
            self.loop_lag = max(0.0, time.perf_counter() - start - 0.1)

    async def receive(self, message: Any) -> Any:
        if message == "url":
            return self.url
        return None

    async def stopped(self) -> None:
        if self._collector is not None:
            self.registry.unregister(self._collector)
            self._collector = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # handlers

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorized(request, required=False):
            return _error(401, "missing or wrong control token")
        snapshot = self.ctx.system.status("root")
        body: dict[str, Any] = {
            "tree": msgspec.to_builtins(snapshot) if snapshot is not None else None,
            "dead_letters": dict(self.ctx.system.dead_letters.by_reason),
            "health": dict(self.health()) if self.health is not None else {},
            "loop_lag_ms": round(self.loop_lag * 1000, 2),
        }
        return web.json_response(body)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request, required=False):
            return _error(401, "missing or wrong control token")
        payload = generate_latest(self.registry)
        return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _livez(self, request: web.Request) -> web.Response:
        ok = self.loop_lag < LAG_LIMIT_S
        body = {"ok": ok, "loop_lag_ms": round(self.loop_lag * 1000, 2)}
        return web.json_response(body, status=200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        results: dict[str, bool] = {}
        for name, actor in self.ready_actors.items():
            ref = self.ctx.system.registry.get(actor)
            results[name] = ref is not None and ref.state == "running"
        for name, probe in self.probes.items():
            try:
                with anyio.fail_after(1.0):
                    results[name] = bool(await probe())
            except Exception:
                results[name] = False
        ok = all(results.values())
        return web.json_response({"ok": ok, "checks": results}, status=200 if ok else 503)

    async def _admin(self, request: web.Request) -> web.Response:
        if not self.token:
            return _error(403, "admin over HTTP needs a control token (CALLWATCH_CONTROL_TOKEN)")
        if not self._authorized(request, required=True):
            self.ctx.log.warning("control.admin_refused", remote=request.remote)
            return _error(401, "missing or wrong control token")
        if request.content_type != "application/json":
            return _error(415, "send application/json")
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, "body too large")
        try:
            raw = await request.read()
            body = json.loads(raw)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "body too large")
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        if self.admin is None:
            return _error(503, "admin is not available")
        status, reply = await self.admin(body)
        return web.json_response(reply, status=status)

    def _authorized(self, request: web.Request, *, required: bool) -> bool:
        if not self.token:
            return not required
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme != "Bearer":
            return False
        return hmac.compare_digest(given.encode(), self.token.reveal().encode())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)
