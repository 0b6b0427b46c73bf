"""The NOWPayments IPN listener: its own HTTP listener, which may be bound publicly.

Anyone on the internet can POST here, so the handler trusts nothing: the body is capped at
64 KiB, must be `application/json`, and must carry an `x-nowpayments-sig` that verifies (in
constant time, both signature forms) before a single field is believed; a missing or forged
signature is answered 401 and logged. A verified payload is handed to the payments actor
with a non-blocking tell and answered 200 at once, well inside the gateway's 3 seconds.

Client mistakes get 4xx, never 5xx. The only 503s are server-side and ask the gateway to
retry: PostgreSQL is down, or the payments actor is not there or its mailbox is full.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import structlog
from aiohttp import web
from prometheus_client import Counter

from actors.store.handle import StoreHandle
from messages.billing import IpnReceived
from messages.payments import MAX_IPN_BODY, IpnError, decode_ipn, verify_ipn_signature
from messages.settings import Secret
from runtime import Actor, NameNotFound

__all__ = ["IPN_PATH", "IpnListener"]

IPN_PATH: Final = "/nowpayments/ipn"
SIGNATURE_HEADER: Final = "x-nowpayments-sig"

log = structlog.get_logger(__name__)

REQUESTS = Counter("callwatch_ipn_requests", "IPN requests by answer", ["status"])


class IpnListener(Actor):
    """Serves `POST /nowpayments/ipn`; `ask("url")` answers the bound base URL."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8789,
        secret: Secret | None = None,
        target: str = "payments",
        store: StoreHandle | None = None,
        on_bound: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.secret = secret
        self.target = target
        self.store = store
        self.on_bound = on_bound
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def started(self) -> None:
        app = web.Application(client_max_size=MAX_IPN_BODY)
        app.router.add_post(IPN_PATH, self._ipn)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self.ctx.log.info("ipn.listening", url=self.url + IPN_PATH, secret_set=bool(self.secret))
        if self.on_bound is not None:
            self.on_bound(self.url)

    async def stopped(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def receive(self, message: Any) -> Any:
        if message == "url":
            return self.url
        return None

    def _answer(self, status: int, error: str | None = None) -> web.Response:
        REQUESTS.labels(str(status)).inc()
        body: dict[str, Any] = {"ok": status == 200}
        if error is not None:
            body["error"] = error
        return web.json_response(body, status=status)

    def _refuse(self, request: web.Request, status: int, reason: str, **extra: Any) -> web.Response:
        self.ctx.log.warning(
            "ipn.refused", status=status, reason=reason, remote=request.remote, **extra
        )
        return self._answer(status, reason)

    async def _ipn(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_IPN_BODY:
            return self._refuse(request, 413, "body too large")
        if request.content_type != "application/json":
            return self._refuse(request, 415, "send application/json")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, 413, "body too large")
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            return self._refuse(request, 401, "missing signature", size=len(body))
        secret = self.secret.reveal() if self.secret else ""
        if not secret:
            return self._refuse(request, 401, "no IPN secret configured", size=len(body))
        if not verify_ipn_signature(body, signature, secret):
            return self._refuse(request, 401, "bad signature", size=len(body))
        try:
            payload = decode_ipn(body)
        except IpnError as exc:
            return self._refuse(request, 400, exc.reason)
        if self.store is not None and not self.store.postgres_up:
            return self._refuse(request, 503, "storage unavailable, retry later")
        try:
            target = self.ctx.lookup(self.target)
        except NameNotFound:
            return self._refuse(request, 503, "payments actor unavailable, retry later")
        if not target.tell_nowait(IpnReceived(payload)):
            return self._refuse(request, 503, "busy, retry later")
        self.ctx.log.info(
            "ipn.accepted",
            payment_id=payload.payment_id,
            status=payload.payment_status.value,
            order_id=payload.order_id,
        )
        return self._answer(200)
