"""The payments actor: plans, orders, coupons, subscriptions, reminders, reconciliation.

It is the only writer of orders, payments and grants. Money reaches it two ways: the SOL
poller (`actors.sol_poller`) asks it to record a transfer `verify_transfer` accepted, and
the IPN listener (`actors.ipn_listener`) tells it every NOWPayments callback whose
signature checked out. Each is one PostgreSQL transaction (`actors.orders`); only after
the commit is the Redis cache refreshed, the user's actor told `SubscriptionChanged` and
the user sent a message through `sender`.

A periodic sweep (on the actor's clock) closes unpaid orders past their expiry, sends the
24-hour reminder once per subscription end (a Redis `SET NX` marker, plus the sender's
`dedup_key`), and on expiry tells the user that notifications stopped.

A database outage never crashes it on a user's request: the user gets a "try again"
refusal. An IPN that could not be applied is kept and retried on the next sweep (the
listener also answers 503 while PostgreSQL is down, so the gateway retries too).
"""

from __future__ import annotations

import contextlib
import html
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import uuid4

import anyio
import asyncpg
import httpx
import redis.exceptions
import structlog
from prometheus_client import Counter

from actors import coupons, orders, subscriptions
from actors.coupons import CouponError
from actors.ipn_listener import IpnListener
from actors.sol_poller import SolPoller, http_client
from actors.store.handle import StoreHandle, StoreUnavailable
from actors.subscriptions import STORE_ERRORS, utc
from messages.billing import (
    CouponList,
    CreateCoupon,
    CreateOrder,
    ExtendSubscription,
    GrantSubscription,
    IpnReceived,
    ListCoupons,
    ListPlans,
    OrderCreated,
    PayMethod,
    PlanList,
    PlanQuote,
    Reconcile,
    RedeemCoupon,
    RedeemResult,
    Refused,
    RevokeSubscription,
    SolPaymentOutcome,
    SolPaymentVerified,
    SubscriptionInfo,
    SubscriptionStatus,
    SweepNow,
    SweepSummary,
)
from messages.delivery import Lane, Outbound
from messages.payments import IpnPayload, Plan
from messages.settings import PaymentsSettings
from messages.solana import build_transfer_url, format_sol, is_pubkey, new_reference
from runtime import Actor, MailboxSpec, NameNotFound
from runtime.timers import every
from supervisors import Backoff, ChildSpec, Strategy, supervisor, worker

__all__ = ["UNAVAILABLE", "Payments", "methods", "payments_tree", "plan_price"]

log = structlog.get_logger(__name__)

UNAVAILABLE: Final = "Payments are briefly unavailable. Please try again in a minute."
GATEWAY_DOWN: Final = (
    "The payment gateway is not answering right now. Please try again in a few minutes,"
    " or pay in SOL."
)
STAGED_PREFIX: Final = "callwatch:payments:coupon:"
REMINDED_PREFIX: Final = "callwatch:payments:reminded:"
EXPIRED_PREFIX: Final = "callwatch:payments:expired:"
EXPIRY_LOOKBACK: Final = timedelta(days=7)
"""Subscriptions that ended this long ago still get their "notifications stopped" message
(after an outage of the service); the Redis markers outlive it."""
_STAGED_TTL: Final = 7 * 86400
_MAX_DAYS: Final = 36500
_MAX_USER: Final = 2**63

GRANTS = Counter("callwatch_payments_grants", "Subscriptions granted", ["source"])
IPN_OUTCOMES = Counter("callwatch_payments_ipn", "IPNs applied, by outcome", ["action"])

_REDIS_ERRORS = (StoreUnavailable, redis.exceptions.RedisError, OSError, TimeoutError)


class _Sweep:
    """The sweep ticker's own message (not for other actors)."""


class InvoiceError(Exception):
    """NOWPayments did not give us an invoice link."""


def plan_price(settings: PaymentsSettings, plan: Plan) -> tuple[int, Decimal]:
    """(lamports, USD) for one plan, from settings."""
    lamports: int = getattr(settings, f"{plan.value}_lamports")
    usd: Decimal = getattr(settings, f"{plan.value}_usd")
    return lamports, usd


def methods(settings: PaymentsSettings) -> tuple[PayMethod, ...]:
    """The payment methods that are fully configured."""
    found: list[PayMethod] = []
    if is_pubkey(settings.wallet) and settings.solana_rpc_url:
        found.append("sol")
    if settings.nowpayments_api_url and settings.nowpayments_api_key and settings.ipn_secret:
        found.append("nowpayments")
    return tuple(found)


def _when(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _until(info: SubscriptionInfo) -> str:
    if info.lifetime:
        return "for life"
    if info.expires_at is None:
        return "(not active)"
    return f"until {_when(info.expires_at)}"


def _valid_user(user_id: object) -> bool:
    return (
        isinstance(user_id, int)
        and not isinstance(user_id, bool)
        and user_id != 0
        and -_MAX_USER < user_id < _MAX_USER
    )


class Payments(Actor):
    """See the module docstring. Registered as "payments"."""

    mailbox = MailboxSpec(capacity=10_000)

    def __init__(
        self,
        store: StoreHandle,
        settings: PaymentsSettings,
        sender: str = "sender",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sender = sender
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._ipn_backlog: deque[IpnPayload] = deque(maxlen=10_000)
        self._sweep_queued = False
        self._handlers: dict[type, Callable[[Any], Awaitable[Any]]] = {
            ListPlans: self._list_plans,
            CreateOrder: self._create_order,
            RedeemCoupon: self._redeem,
            SubscriptionStatus: self._status,
            GrantSubscription: self._grant,
            ExtendSubscription: self._extend,
            RevokeSubscription: self._revoke,
            CreateCoupon: self._create_coupon,
            ListCoupons: self._list_coupons,
            Reconcile: self._reconcile,
        }

    # -- lifecycle ---------------------------------------------------------------------

    async def started(self) -> None:
        self._http = http_client(self.settings.http_timeout_s, self._transport)
        self.ctx.log.info("payments.started", methods=list(methods(self.settings)))

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(every, self.ctx.clock, self.settings.sweep_interval_s, self._queue_sweep)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def stopped(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _queue_sweep(self) -> None:
        if not self._sweep_queued:
            self._sweep_queued = self.ctx.ref.tell_nowait(_Sweep())

    def _now(self) -> datetime:
        return utc(self.ctx.clock.wall())

    # -- dispatch ----------------------------------------------------------------------

    async def receive(self, message: Any) -> Any:
        if isinstance(message, IpnReceived):
            await self._on_ipn(message.payload)
            return None
        if isinstance(message, SolPaymentVerified):
            return await self._on_sol(message)
        if isinstance(message, _Sweep | SweepNow):
            if isinstance(message, _Sweep):
                self._sweep_queued = False
            return await self._sweep()
        handler = self._handlers.get(type(message))
        if handler is None:
            self.ctx.log.warning("payments.unknown_message", type=type(message).__name__)
            return Refused("Unknown request.")
        try:
            return await handler(message)
        except STORE_ERRORS as exc:
            self.ctx.log.warning(
                "payments.store_unavailable", request=type(message).__name__, error=repr(exc)
            )
            return Refused(UNAVAILABLE)

    # -- side effects after a commit ---------------------------------------------------

    def _notify(
        self,
        chat_id: int,
        text: str,
        *,
        lane: Lane = Lane.INTERACTIVE,
        dedup_key: str | None = None,
        kind: str = "message",
    ) -> None:
        try:
            sender = self.ctx.lookup(self.sender)
        except NameNotFound:
            self.ctx.log.warning("payments.no_sender", chat_id=chat_id, kind=kind)
            return
        message = Outbound(chat_id=chat_id, text=text, lane=lane, dedup_key=dedup_key, kind=kind)
        if not sender.tell_nowait(message):
            self.ctx.log.warning("payments.sender_full", chat_id=chat_id, kind=kind)

    async def _after_change(self, chat_id: int, now: datetime) -> SubscriptionInfo | None:
        try:
            return await subscriptions.publish(self.ctx, self.store, chat_id, now)
        except STORE_ERRORS as exc:
            self.ctx.log.warning("payments.publish_failed", chat_id=chat_id, error=repr(exc))
            subscriptions.tell_user(self.ctx, chat_id)
            return None

    async def _mark_once(self, key: str, ttl: int) -> bool:
        try:
            return bool(await self.store.redis().set(key, "1", nx=True, ex=ttl))
        except _REDIS_ERRORS as exc:
            self.ctx.log.warning("payments.marker_failed", error=type(exc).__name__)
            return False

    # -- plans and orders --------------------------------------------------------------

    async def _list_plans(self, _: ListPlans) -> PlanList:
        quotes = []
        for plan in Plan:
            lamports, usd = plan_price(self.settings, plan)
            duration = plan.duration
            quotes.append(
                PlanQuote(
                    plan=plan,
                    lamports=lamports,
                    sol=format_sol(lamports),
                    usd=usd,
                    days=None if duration is None else duration.days,
                )
            )
        return PlanList(plans=tuple(quotes), methods=methods(self.settings))

    async def _staged(self, user: int) -> str | None:
        try:
            raw = await self.store.redis().get(f"{STAGED_PREFIX}{user}")
        except _REDIS_ERRORS:
            return None
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def _unstage(self, user: int) -> None:
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.store.redis().delete(f"{STAGED_PREFIX}{user}")

    async def _create_order(self, req: CreateOrder) -> OrderCreated | RedeemResult | Refused:
        user = req.user_id
        if not _valid_user(user):
            return Refused("Unknown user.")
        try:
            plan = Plan(req.plan)
        except ValueError:
            return Refused("Unknown plan. Choose daily, weekly, monthly or lifetime.")
        if req.method not in methods(self.settings):
            return Refused(f"Paying with {req.method} is not available right now.")
        sol = req.method == "sol"
        now = self._now()
        code, staged = req.coupon, False
        if code is None:
            code = await self._staged(user)
            staged = code is not None
        lamports, usd = plan_price(self.settings, plan)
        ttl = self.settings.order_ttl_s if sol else self.settings.invoice_ttl_s
        order_id = uuid4()
        reference = new_reference() if sol else str(order_id)
        discount: str | None = None
        coupon_code: str | None = None
        free: subscriptions.Segment | None = None
        order: orders.Order | None = None
        try:
            async with self.store.pool().acquire() as conn, conn.transaction():
                await subscriptions.ensure_user(conn, user)
                if await conn.fetchval("SELECT locked FROM users WHERE chat_id = $1", user):
                    return Refused("This account is locked. Contact the admins.")
                if (await subscriptions.status(conn, user, now)).lifetime:
                    return Refused("You already have a lifetime subscription.")
                coupon = None
                if code is not None:
                    coupon = await coupons.lock_usable(conn, code, user, now, plan=plan.value)
                    if coupon.kind == "free_days":
                        raise CouponError(
                            f"Coupon {coupon.code} gives free days: send /redeem {coupon.code}."
                        )
                    lamports, usd = coupons.apply_discount(coupon, lamports, usd)
                    discount, coupon_code = coupons.describe(coupon), coupon.code
                    if lamports == 0:
                        await coupons.consume(conn, coupon, user, now)
                        free = await subscriptions.grant(
                            conn,
                            chat_id=user,
                            plan=plan.value,
                            duration=plan.duration,
                            now=now,
                            source="coupon",
                            coupon_id=coupon.id,
                        )
                if free is None:
                    order = await orders.create_order(
                        conn,
                        order_id=order_id,
                        chat_id=user,
                        plan=plan,
                        method=req.method,
                        lamports=lamports if sol else None,
                        usd=usd,
                        coupon_id=None if coupon is None else coupon.id,
                        reference_key=reference,
                        now=now,
                        expires_at=now + timedelta(seconds=ttl),
                    )
                    if coupon is not None:
                        await coupons.consume(conn, coupon, user, now, order.id)
        except CouponError as exc:
            if staged:
                await self._unstage(user)
                return Refused(f"{exc.reason} Your order was not created; try /subscribe again.")
            return Refused(exc.reason)
        if staged:
            await self._unstage(user)

        if free is not None:
            GRANTS.labels("coupon").inc()
            info = await self._after_change(user, now)
            until = _until(info) if info is not None else ""
            return RedeemResult(
                ok=True,
                text=f"Coupon {coupon_code} covers the whole {plan.value} plan. "
                f"Your subscription is active {until}.",
                subscription=info,
            )
        assert order is not None
        self.ctx.log.info(
            "order.created", order_id=str(order.id), user=user, plan=plan.value, method=req.method
        )
        if sol:
            return self._sol_offer(order, plan, discount, coupon_code)
        return await self._invoice_offer(order, plan, discount, coupon_code)

    def _sol_offer(
        self, order: orders.Order, plan: Plan, discount: str | None, coupon: str | None
    ) -> OrderCreated:
        assert order.amount_lamports is not None
        memo = f"callwatch:{order.id}"
        url = build_transfer_url(
            self.settings.wallet,
            order.amount_lamports,
            order.reference_key,
            label="callwatch",
            message=f"callwatch {plan.value} plan",
            memo=memo,
        )
        return OrderCreated(
            order_id=str(order.id),
            plan=plan,
            method="sol",
            pay_url=url,
            expires_at=order.expires_at,
            amount_lamports=order.amount_lamports,
            amount_sol=format_sol(order.amount_lamports),
            amount_usd=order.amount_usd,
            reference=order.reference_key,
            memo=memo,
            coupon=coupon,
            discount=discount,
        )

    async def _invoice_offer(
        self, order: orders.Order, plan: Plan, discount: str | None, coupon: str | None
    ) -> OrderCreated | Refused:
        try:
            link = await self._create_invoice(order, plan)
        except InvoiceError as exc:
            self.ctx.log.warning("order.invoice_failed", order_id=str(order.id), error=str(exc))
            async with self.store.pool().acquire() as conn, conn.transaction():
                await orders.fail_order(conn, order.id)
            return Refused(GATEWAY_DOWN)
        return OrderCreated(
            order_id=str(order.id),
            plan=plan,
            method="nowpayments",
            pay_url=link,
            expires_at=order.expires_at,
            amount_usd=order.amount_usd,
            coupon=coupon,
            discount=discount,
        )

    async def _create_invoice(self, order: orders.Order, plan: Plan) -> str:
        """`POST /v1/invoice`; returns the invoice page link."""
        settings = self.settings
        assert self._http is not None and settings.nowpayments_api_key is not None
        assert order.amount_usd is not None
        body: dict[str, Any] = {
            "price_amount": float(order.amount_usd),
            "price_currency": settings.price_currency,
            "order_id": str(order.id),
            "order_description": f"callwatch {plan.value} plan",
        }
        if settings.ipn_callback_url:
            body["ipn_callback_url"] = settings.ipn_callback_url
        url = settings.nowpayments_api_url.rstrip("/") + "/v1/invoice"
        headers = {"x-api-key": settings.nowpayments_api_key.reveal()}
        try:
            response = await self._http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise InvoiceError(type(exc).__name__) from None
        if response.status_code not in (200, 201):
            raise InvoiceError(f"HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise InvoiceError("answer is not JSON") from None
        link = data.get("invoice_url") if isinstance(data, dict) else None
        if not isinstance(link, str) or not link.startswith(("https://", "http://")):
            raise InvoiceError("answer has no invoice_url")
        return link

    # -- coupons -----------------------------------------------------------------------

    async def _redeem(self, req: RedeemCoupon) -> RedeemResult:
        user = req.user_id
        if not _valid_user(user):
            return RedeemResult(ok=False, text="Unknown user.")
        now = self._now()
        segment = None
        try:
            async with self.store.pool().acquire() as conn, conn.transaction():
                await subscriptions.ensure_user(conn, user)
                coupon = await coupons.lock_usable(conn, req.code, user, now)
                if coupon.kind == "free_days":
                    if (await subscriptions.status(conn, user, now)).lifetime:
                        return RedeemResult(
                            ok=False,
                            text="You already have a lifetime subscription; keep the coupon"
                            " for someone else.",
                        )
                    await coupons.consume(conn, coupon, user, now)
                    segment = await subscriptions.grant(
                        conn,
                        chat_id=user,
                        plan=coupon.plan or "coupon",
                        duration=timedelta(days=int(coupon.value)),
                        now=now,
                        source="coupon",
                        coupon_id=coupon.id,
                    )
        except CouponError as exc:
            return RedeemResult(ok=False, text=exc.reason)
        if segment is not None:
            GRANTS.labels("coupon").inc()
            info = await self._after_change(user, now)
            until = _until(info) if info is not None else ""
            return RedeemResult(
                ok=True,
                text=f"Coupon {coupon.code} applied: {coupons.describe(coupon)}. "
                f"Your subscription is active {until}.",
                subscription=info,
            )
        try:
            await self.store.redis().set(f"{STAGED_PREFIX}{user}", coupon.code, ex=_STAGED_TTL)
        except _REDIS_ERRORS:
            return RedeemResult(
                ok=False,
                text=f"Could not save coupon {coupon.code} right now; try again in a minute.",
            )
        return RedeemResult(
            ok=True,
            text=f"Coupon {coupon.code}: {coupons.describe(coupon)} your next order. "
            "Choose a plan with /subscribe.",
            staged_coupon=coupon.code,
        )

    async def _create_coupon(self, req: CreateCoupon) -> Any:
        try:
            return await coupons.create(self.store.pool(), req, self._now())
        except CouponError as exc:
            return Refused(exc.reason)

    async def _list_coupons(self, _: ListCoupons) -> CouponList:
        return CouponList(await coupons.list_all(self.store.pool()))

    # -- subscriptions -----------------------------------------------------------------

    async def _status(self, req: SubscriptionStatus) -> SubscriptionInfo | Refused:
        if not _valid_user(req.user_id):
            return Refused("Unknown user.")
        return await subscriptions.status(self.store.pool(), req.user_id, self._now())

    async def _admin_grant(
        self, user: int, label: str, duration: timedelta | None, by: int
    ) -> SubscriptionInfo | Refused:
        now = self._now()
        async with self.store.pool().acquire() as conn, conn.transaction():
            if (await subscriptions.status(conn, user, now)).lifetime:
                return Refused(f"User {user} already has a lifetime subscription.")
            await subscriptions.grant(
                conn,
                chat_id=user,
                plan=label,
                duration=duration,
                now=now,
                source="admin",
                granted_by=by,
            )
        GRANTS.labels("admin").inc()
        info = await self._after_change(user, now)
        if info is None:
            return Refused(UNAVAILABLE)
        self._notify(
            user, f"An admin gave you the {label} plan: you are subscribed {_until(info)}."
        )
        return info

    async def _grant(self, req: GrantSubscription) -> SubscriptionInfo | Refused:
        if not _valid_user(req.user_id):
            return Refused("Unknown user.")
        if (req.plan is None) == (req.days is None):
            return Refused("Give either a plan or a number of days.")
        if req.plan is not None:
            try:
                plan = Plan(req.plan)
            except ValueError:
                return Refused("Unknown plan.")
            return await self._admin_grant(req.user_id, plan.value, plan.duration, req.by)
        assert req.days is not None
        if not 1 <= req.days <= _MAX_DAYS:
            return Refused(f"Days must be between 1 and {_MAX_DAYS}.")
        return await self._admin_grant(req.user_id, "custom", timedelta(days=req.days), req.by)

    async def _extend(self, req: ExtendSubscription) -> SubscriptionInfo | Refused:
        if not _valid_user(req.user_id):
            return Refused("Unknown user.")
        if not 1 <= req.days <= _MAX_DAYS:
            return Refused(f"Days must be between 1 and {_MAX_DAYS}.")
        current = await subscriptions.status(self.store.pool(), req.user_id, self._now())
        label = current.plan if current.active and current.plan else "custom"
        return await self._admin_grant(req.user_id, label, timedelta(days=req.days), req.by)

    async def _revoke(self, req: RevokeSubscription) -> SubscriptionInfo | Refused:
        if not _valid_user(req.user_id):
            return Refused("Unknown user.")
        now = self._now()
        async with self.store.pool().acquire() as conn, conn.transaction():
            count = await subscriptions.revoke_all(
                conn, req.user_id, now=now, by=req.by, reason=req.reason
            )
        if not count:
            return Refused(f"User {req.user_id} has no running subscription.")
        info = await self._after_change(req.user_id, now)
        self._notify(req.user_id, "An admin ended your callwatch subscription.")
        return info if info is not None else Refused(UNAVAILABLE)

    async def _reconcile(self, req: Reconcile) -> Any:
        since, until = req.since, req.until
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        if not since < until:
            return Refused("The period must start before it ends.")
        return await orders.reconcile(self.store.pool(), since, until)

    # -- money in ----------------------------------------------------------------------

    async def _on_sol(self, msg: SolPaymentVerified) -> SolPaymentOutcome | Refused:
        now = self._now()
        try:
            result = await orders.record_sol_payment(self.store.pool(), msg, now)
        except STORE_ERRORS as exc:
            self.ctx.log.warning("payments.sol_store_unavailable", error=repr(exc))
            return Refused(UNAVAILABLE)
        order = result.order
        self.ctx.log.info(
            "payments.sol",
            outcome=result.outcome,
            order_id=msg.order_id,
            signature=msg.signature,
            lamports=msg.lamports,
        )
        if order is None:
            return SolPaymentOutcome(outcome=result.outcome)
        if result.outcome == "granted":
            GRANTS.labels("payment").inc()
            info = await self._after_change(order.chat_id, now)
            until = _until(info) if info is not None else ""
            self._notify(
                order.chat_id,
                f"Payment received: {format_sol(msg.lamports)} SOL for the {order.plan} plan."
                f" You are subscribed {until}.",
                dedup_key=f"paid:{order.id}",
                kind="payment",
            )
        elif result.outcome in ("late", "already_paid"):
            why = "after the order expired" if result.outcome == "late" else "for a paid order"
            self.ctx.log.warning(
                "payments.received_not_granted", order_id=str(order.id), signature=msg.signature
            )
            self._notify(
                order.chat_id,
                f"We received {format_sol(msg.lamports)} SOL {why}"
                f" (order <code>{html.escape(str(order.id))}</code>). An admin will sort it out;"
                " you can also create a new order with /subscribe.",
                dedup_key=f"unmatched:{msg.signature}",
                kind="payment",
            )
        return SolPaymentOutcome(outcome=result.outcome, user_id=order.chat_id)

    async def _on_ipn(self, payload: IpnPayload) -> None:
        now = self._now()
        try:
            outcome = await orders.record_ipn(
                self.store.pool(), payload, now, currency=self.settings.price_currency
            )
        except STORE_ERRORS as exc:
            self._ipn_backlog.append(payload)
            self.ctx.log.warning("ipn.deferred", payment_id=payload.payment_id, error=repr(exc))
            return
        except asyncpg.PostgresError as exc:
            self.ctx.log.error(
                "ipn.unrecordable", payment_id=payload.payment_id, error=type(exc).__name__
            )
            return
        IPN_OUTCOMES.labels(outcome.action).inc()
        order = outcome.order
        self.ctx.log.info(
            "ipn.applied",
            action=outcome.action,
            detail=outcome.detail,
            status=payload.payment_status.value,
            payment_id=payload.payment_id,
            order_id=payload.order_id,
        )
        if order is None:
            return
        user, plan = order.chat_id, order.plan
        if outcome.action == "granted":
            GRANTS.labels("payment").inc()
            info = await self._after_change(user, now)
            until = _until(info) if info is not None else ""
            self._notify(
                user,
                f"Payment received for the {plan} plan. You are subscribed {until}.",
                dedup_key=f"paid:{order.id}",
                kind="payment",
            )
        elif outcome.action == "partial":
            paid = payload.actually_paid
            due = payload.pay_amount
            currency = (payload.pay_currency or "").upper()
            amounts = f" ({paid} of {due} {currency})" if paid is not None and due else ""
            self._notify(
                user,
                f"We received part of your payment for the {plan} plan{html.escape(amounts)}."
                " Please pay the rest on the same invoice page.",
                dedup_key=f"partial:{payload.payment_id}:{paid}",
                kind="payment",
            )
        elif outcome.action == "closed":
            self._notify(
                user,
                f"Your invoice for the {plan} plan has {outcome.detail}."
                " Start again with /subscribe whenever you like.",
                dedup_key=f"closed:{order.id}",
                kind="payment",
            )
        elif outcome.action == "revoked":
            text = f"Your payment for the {plan} plan was refunded."
            if outcome.revoked_user is not None:
                await self._after_change(outcome.revoked_user, now)
                text += " The subscription time it bought has been removed."
            self._notify(
                user,
                text,
                dedup_key=f"refunded:{payload.payment_id}",
                kind="payment",
            )
        elif outcome.action == "refused":
            self.ctx.log.warning(
                "payments.received_not_granted", order_id=str(order.id), reason=outcome.detail
            )
            self._notify(
                user,
                f"We received a payment for your {plan} order that does not match it"
                f" ({html.escape(outcome.detail)}). An admin will review it.",
                dedup_key=f"refused:{payload.payment_id}",
                kind="payment",
            )

    # -- the sweep ---------------------------------------------------------------------

    async def _sweep(self) -> SweepSummary:
        now = self._now()
        try:
            return await self._sweep_at(now)
        except STORE_ERRORS as exc:
            self.ctx.log.warning("payments.sweep_skipped", error=repr(exc))
            return SweepSummary(orders_closed=0, reminders=0, expired=0)

    async def _sweep_at(self, now: datetime) -> SweepSummary:
        settings = self.settings
        pool = self.store.pool()
        async with pool.acquire() as conn, conn.transaction():
            closed = await orders.close_expired(
                conn, now, timedelta(seconds=settings.settle_grace_s)
            )
        for order, code in closed:
            self.ctx.log.info("order.expired", order_id=str(order.id), coupon_released=code)

        lead = timedelta(seconds=settings.reminder_lead_s)
        marker_ttl = int(lead.total_seconds() + EXPIRY_LOOKBACK.total_seconds()) + 86400
        reminders = 0
        for chat_id, ends in await subscriptions.due_reminders(pool, now, lead):
            key = f"{REMINDED_PREFIX}{chat_id}:{int(ends.timestamp())}"
            if await self._mark_once(key, marker_ttl):
                reminders += 1
                self._notify(
                    chat_id,
                    f"⏰ Your callwatch subscription ends on {_when(ends)}."
                    " Renew with /subscribe to keep receiving calls.",
                    lane=Lane.ALERT,
                    dedup_key=key,
                    kind="reminder",
                )
        expired = 0
        for chat_id, ended in await subscriptions.recently_expired(pool, now, EXPIRY_LOOKBACK):
            key = f"{EXPIRED_PREFIX}{chat_id}:{int(ended.timestamp())}"
            if await self._mark_once(key, marker_ttl):
                expired += 1
                await self._after_change(chat_id, now)
                self._notify(
                    chat_id,
                    "Your callwatch subscription has ended, so call notifications have stopped."
                    " Renew any time with /subscribe.",
                    lane=Lane.ALERT,
                    dedup_key=key,
                    kind="expired",
                )
        backlog, self._ipn_backlog = list(self._ipn_backlog), deque(maxlen=10_000)
        for payload in backlog:
            await self._on_ipn(payload)
        return SweepSummary(orders_closed=len(closed), reminders=reminders, expired=expired)


def payments_tree(
    store: StoreHandle,
    settings: PaymentsSettings,
    *,
    backoff: Backoff | None = None,
    sender: str = "sender",
    on_ipn_bound: Callable[[str], None] | None = None,
) -> ChildSpec:
    """The payments subtree: "payments" (the actor above), "sol-poller" and, when an IPN
    secret is set, "ipn-listener". One-for-one, with room for a long RPC outage: the poller
    crashes at most once per poll interval plus backoff, which stays under the intensity."""
    children = [
        worker("payments", Payments, store=store, settings=settings, sender=sender),
        worker("sol-poller", SolPoller, store=store, settings=settings),
    ]
    if settings.ipn_secret:
        children.append(
            worker(
                "ipn-listener",
                IpnListener,
                host=settings.ipn_host,
                port=settings.ipn_port,
                secret=settings.ipn_secret,
                store=store,
                on_bound=on_ipn_bound,
            )
        )
    return supervisor(
        "billing",
        children,
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=30,
        period=60.0,
        backoff=backoff if backoff is not None else Backoff(initial=0.5, maximum=30.0),
    )
