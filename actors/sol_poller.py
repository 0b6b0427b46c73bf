"""The SOL poller: watches open SOL orders on chain through a Solana JSON-RPC endpoint.

Every `poll_interval_s` (on the actor's clock) it reads the open orders from PostgreSQL,
asks the node for the signatures that mention each order's reference key (commitment
`finalized`), fetches every new one with `getTransaction` (`jsonParsed`, `finalized`,
`maxSupportedTransactionVersion: 0`) and asks the payments actor to record the ones
`verify_transfer` accepts. It never grants by itself.

The endpoint going away (connection refused, timeout, HTTP error, JSON-RPC error) crashes
the poller; its supervisor's backoff restart is the reconnect. Orders live in PostgreSQL,
so a restart loses nothing: the next incarnation simply looks again. A malformed answer is
not an outage: it is logged and skipped, and never grants.
"""

from __future__ import annotations

import functools
import itertools
import ssl
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import anyio
import certifi
import httpx
from cachetools import TTLCache
from prometheus_client import Counter

from actors import orders
from actors.store.handle import StoreHandle
from actors.subscriptions import STORE_ERRORS, utc
from messages.billing import PollNow, PollSummary, Refused, SolPaymentOutcome, SolPaymentVerified
from messages.settings import PaymentsSettings
from messages.solana import TransferVerdict, is_pubkey, verify_transfer
from runtime import Actor, ActorFailed, ActorStopped, AskTimeout, MailboxFull, NameNotFound
from runtime.timers import every

__all__ = ["TX_CONFIG", "RpcError", "SolPoller", "http_client"]

TX_CONFIG: Final = {
    "encoding": "jsonParsed",
    "commitment": "finalized",
    "maxSupportedTransactionVersion": 0,
}
SIGNATURE_LIMIT: Final = 50
_REFUSED_TTL: Final = 86400.0
_NOT_YET: Final = "transaction not found"


def _may_change(reason: str) -> bool:
    """Refusals a later poll may overturn (not visible or not finalized yet)."""
    return reason == _NOT_YET or "not finalized" in reason


VERDICTS = Counter("callwatch_sol_transfers", "Transfers judged by the SOL poller", ["verdict"])


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def http_client(
    timeout: float, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """An httpx client that shares one TLS context per process: building a context loads
    the CA bundle, which costs up to a second on a busy machine, at every (re)start."""
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout), verify=_tls(), transport=transport)


class RpcError(Exception):
    """The RPC endpoint is unreachable or answered with an error: crash and restart."""


class _Poll:
    """The poll ticker's own message."""


class SolPoller(Actor):
    """See the module docstring. Registered as "sol-poller"."""

    def __init__(
        self,
        store: StoreHandle,
        settings: PaymentsSettings,
        target: str = "payments",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.target = target
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._ids = itertools.count(1)
        self._poll_queued = False
        self._refused: TTLCache[str, str] | None = None

    @property
    def enabled(self) -> bool:
        return is_pubkey(self.settings.wallet) and bool(self.settings.solana_rpc_url)

    async def started(self) -> None:
        self._http = http_client(self.settings.rpc_timeout_s, self._transport)
        self._refused = TTLCache(maxsize=50_000, ttl=_REFUSED_TTL, timer=self.ctx.clock.monotonic)
        if not self.enabled:
            self.ctx.log.info("sol_poller.disabled", reason="no wallet or RPC URL configured")

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.enabled:
                tg.start_soon(
                    every, self.ctx.clock, self.settings.poll_interval_s, self._queue_poll
                )
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def stopped(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _queue_poll(self) -> None:
        if not self._poll_queued:
            self._poll_queued = self.ctx.ref.tell_nowait(_Poll())

    async def receive(self, message: Any) -> Any:
        if isinstance(message, _Poll):
            self._poll_queued = False
            return await self.poll()
        if isinstance(message, PollNow):
            return await self.poll()
        return None

    # -- JSON-RPC ----------------------------------------------------------------------

    async def _rpc(self, method: str, params: list[Any]) -> Any:
        assert self._http is not None
        request = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        try:
            response = await self._http.post(self.settings.solana_rpc_url, json=request)
        except httpx.HTTPError as exc:
            raise RpcError(f"{method}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise RpcError(f"{method}: HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise RpcError(f"{method}: answer is not JSON") from None
        if not isinstance(body, dict):
            raise RpcError(f"{method}: answer is not a JSON-RPC object")
        error = body.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            raise RpcError(f"{method}: error {code}: {str(message)[:200]}")
        return body.get("result")

    # -- polling -----------------------------------------------------------------------

    async def poll(self) -> PollSummary:
        """Look at every open order once."""
        if not self.enabled:
            return PollSummary(orders=0, signatures=0, granted=0, refused=0)
        now = utc(self.ctx.clock.wall())
        grace = timedelta(seconds=self.settings.settle_grace_s)
        try:
            pool = self.store.pool()
            open_orders = await orders.open_sol_orders(pool, now, grace)
        except STORE_ERRORS as exc:
            self.ctx.log.warning("sol_poller.store_unavailable", error=repr(exc))
            return PollSummary(orders=0, signatures=0, granted=0, refused=0)
        seen = granted = refused = 0
        for order in open_orders:
            s, g, r = await self._poll_order(pool, order)
            seen, granted, refused = seen + s, granted + g, refused + r
        return PollSummary(
            orders=len(open_orders), signatures=seen, granted=granted, refused=refused
        )

    async def _poll_order(self, pool: Any, order: orders.Order) -> tuple[int, int, int]:
        assert self._refused is not None and order.amount_lamports is not None
        rows = await self._rpc(
            "getSignaturesForAddress",
            [order.reference_key, {"commitment": "finalized", "limit": SIGNATURE_LIMIT}],
        )
        if not isinstance(rows, list):
            self.ctx.log.warning("sol_poller.malformed", method="getSignaturesForAddress")
            return 0, 0, 0
        candidates: list[Mapping[str, Any]] = [
            row
            for row in rows
            if isinstance(row, Mapping) and orders.is_signature(row.get("signature"))
        ]
        try:
            known = await orders.known_signatures(pool, [row["signature"] for row in candidates])
        except STORE_ERRORS as exc:
            self.ctx.log.warning("sol_poller.store_unavailable", error=repr(exc))
            return 0, 0, 0
        granted = refused = 0
        for row in candidates:
            signature: str = row["signature"]
            if signature in known or signature in self._refused:
                continue
            if row.get("err") is not None:
                self._refuse(order, signature, "transaction failed on chain")
                refused += 1
                continue
            tx = await self._rpc("getTransaction", [signature, TX_CONFIG])
            status = row.get("confirmationStatus")
            verdict = verify_transfer(
                tx if isinstance(tx, Mapping) else None,
                wallet=self.settings.wallet,
                expected_lamports=order.amount_lamports,
                reference=order.reference_key,
                confirmation_status=status if isinstance(status, str) else None,
            )
            if verdict.ok and verdict.signature != signature:
                verdict = TransferVerdict(ok=False, reason="node returned another transaction")
            if not verdict.ok:
                if not _may_change(verdict.reason):
                    self._refuse(order, signature, verdict.reason)
                    refused += 1
                continue
            VERDICTS.labels("ok").inc()
            assert verdict.lamports is not None
            message = SolPaymentVerified(
                order_id=str(order.id),
                signature=signature,
                lamports=verdict.lamports,
                slot=verdict.slot,
                block_time=verdict.block_time,
                flags=verdict.flags,
            )
            try:
                outcome = await self.ctx.lookup(self.target).ask(message, timeout=10.0)
            except (NameNotFound, AskTimeout, ActorFailed, ActorStopped, MailboxFull) as exc:
                self.ctx.log.warning("sol_poller.handoff_failed", error=type(exc).__name__)
                continue
            if isinstance(outcome, SolPaymentOutcome) and outcome.outcome == "granted":
                granted += 1
            elif isinstance(outcome, Refused):
                self.ctx.log.warning("sol_poller.handoff_refused", reason=outcome.reason)
        return len(candidates), granted, refused

    def _refuse(self, order: orders.Order, signature: str, reason: str) -> None:
        """Remember a transfer that will never pay this order, so we stop fetching it."""
        assert self._refused is not None
        self._refused[signature] = reason
        VERDICTS.labels("refused").inc()
        self.ctx.log.warning(
            "sol_poller.refused", order_id=str(order.id), signature=signature, reason=reason
        )
