"""Orders and payments in PostgreSQL: the money half of the payments actor.

Each function that moves money is one transaction that locks the order row first, writes
the payment row (whose UNIQUE transaction signature / provider payment id makes a second
sighting a no-op) and, when the payment pays, the subscription grant. So a signature grants
at most once even when two callers race, and a crash between the two writes cannot happen.

NOWPayments callbacks repeat and arrive out of order. A payment row only ever moves up
this ladder: pending < partially_paid < failed < confirmed < refunded; a callback that
would move it down or sideways changes nothing. So `finished` twice grants once, and a
`finished` that arrives after `refunded` does not grant again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Literal
from uuid import UUID

import asyncpg

from actors import subscriptions
from actors.coupons import release
from actors.subscriptions import Conn, Segment, utc
from messages.billing import (
    Mismatch,
    PayMethod,
    ReconcileReport,
    ReconcileRow,
    SolPaymentVerified,
)
from messages.payments import IpnPayload, PaymentStatus, Plan

__all__ = [
    "IpnOutcome",
    "Order",
    "SolOutcome",
    "close_expired",
    "create_order",
    "fail_order",
    "get_order",
    "is_signature",
    "known_signatures",
    "open_sol_orders",
    "reconcile",
    "record_ipn",
    "record_sol_payment",
]

_ORDER_COLUMNS: Final = (
    "id, chat_id, plan, method, amount_lamports, amount_usd, coupon_id, reference_key, status,"
    " created_at, expires_at, paid_at"
)
_RANK: Final = {"pending": 0, "partially_paid": 1, "failed": 2, "confirmed": 3, "refunded": 4}
_IPN_TO_PAYMENT: Final = {
    PaymentStatus.WAITING: "pending",
    PaymentStatus.CONFIRMING: "pending",
    PaymentStatus.CONFIRMED: "pending",
    PaymentStatus.SENDING: "pending",
    PaymentStatus.PARTIALLY_PAID: "partially_paid",
    PaymentStatus.FINISHED: "confirmed",
    PaymentStatus.FAILED: "failed",
    PaymentStatus.EXPIRED: "failed",
    PaymentStatus.REFUNDED: "refunded",
}
_MAX_USD: Final = Decimal("1e10")
_CENT: Final = Decimal("0.01")
_SIGNATURE_CHARS: Final = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True)
class Order:
    id: UUID
    chat_id: int
    plan: str
    method: PayMethod
    amount_lamports: int | None
    amount_usd: Decimal | None
    coupon_id: int | None
    reference_key: str
    status: str
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None

    @property
    def duration(self) -> timedelta | None:
        return Plan(self.plan).duration


def _order(row: asyncpg.Record) -> Order:
    return Order(**dict(row))


def is_signature(text: object) -> bool:
    """Base58 of the right length for the payments table's CHECK (and a real signature)."""
    return isinstance(text, str) and 64 <= len(text) <= 88 and set(text) <= _SIGNATURE_CHARS


async def create_order(
    conn: Conn,
    *,
    order_id: UUID,
    chat_id: int,
    plan: Plan,
    method: PayMethod,
    lamports: int | None,
    usd: Decimal | None,
    coupon_id: int | None,
    reference_key: str,
    now: datetime,
    expires_at: datetime,
) -> Order:
    row = await conn.fetchrow(
        f"INSERT INTO orders (id, chat_id, plan, method, amount_lamports, amount_usd, coupon_id,"  # noqa: S608 - constant column list; values are parameters
        f" reference_key, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        f" $10) RETURNING {_ORDER_COLUMNS}",
        order_id,
        chat_id,
        plan.value,
        method,
        lamports,
        usd,
        coupon_id,
        reference_key,
        now,
        expires_at,
    )
    assert row is not None
    return _order(row)


async def get_order(conn: Conn | asyncpg.Pool, order_id: UUID) -> Order | None:
    row = await conn.fetchrow(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1", order_id)  # noqa: S608 - constant column list; values are parameters
    return None if row is None else _order(row)


async def open_sol_orders(
    conn: Conn | asyncpg.Pool, now: datetime, grace: timedelta
) -> list[Order]:
    """Pending SOL orders still worth watching: not expired, or expired less than `grace` ago."""
    rows = await conn.fetch(
        f"SELECT {_ORDER_COLUMNS} FROM orders WHERE status = 'pending' AND method = 'sol'"  # noqa: S608 - constant column list; values are parameters
        " AND expires_at > $1 ORDER BY created_at",
        now - grace,
    )
    return [_order(row) for row in rows]


async def known_signatures(conn: Conn | asyncpg.Pool, signatures: list[str]) -> set[str]:
    if not signatures:
        return set()
    rows = await conn.fetch(
        "SELECT tx_signature FROM payments WHERE tx_signature = ANY($1::text[])", signatures
    )
    return {row["tx_signature"] for row in rows}


async def fail_order(conn: Conn, order_id: UUID) -> None:
    """The order could not be offered (the gateway refused): close it, free its coupon."""
    await conn.execute(
        "UPDATE orders SET status = 'failed' WHERE id = $1 AND status = 'pending'", order_id
    )
    await release(conn, order_id)


async def close_expired(
    conn: Conn, now: datetime, sol_grace: timedelta
) -> list[tuple[Order, str | None]]:
    """Close pending orders past their expiry (SOL ones after the settle grace) and release
    their coupons. Call inside a transaction; returns (order, released coupon code)."""
    rows = await conn.fetch(
        f"UPDATE orders SET status = 'expired' WHERE status = 'pending' AND ("  # noqa: S608 - constant column list; values are parameters
        f" (method = 'sol' AND expires_at <= $1) OR (method = 'nowpayments' AND expires_at <= $2))"
        f" RETURNING {_ORDER_COLUMNS}",
        now - sol_grace,
        now,
    )
    closed = []
    for row in rows:
        order = _order(row)
        closed.append((order, await release(conn, order.id)))
    return closed


# -- SOL ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SolOutcome:
    outcome: Literal["granted", "duplicate", "late", "already_paid", "unknown_order"]
    order: Order | None = None
    segment: Segment | None = None


async def record_sol_payment(
    pool: asyncpg.Pool, verified: SolPaymentVerified, now: datetime
) -> SolOutcome:
    """Record one verified transfer and grant its order's plan, in one transaction.

    A transfer dated after the order's expiry, or one for an order already paid by another
    transfer, is recorded as `failed` (money received, nothing granted: reconciliation lists
    it for a refund) and grants nothing.
    """
    try:
        order_id = UUID(verified.order_id)
    except ValueError:
        return SolOutcome("unknown_order")
    if not is_signature(verified.signature):
        return SolOutcome("unknown_order")
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1 AND method = 'sol' FOR UPDATE",  # noqa: S608 (constant column list)
            order_id,
        )
        if row is None:
            return SolOutcome("unknown_order")
        order = _order(row)
        sent_at = utc(verified.block_time) if verified.block_time is not None else now
        outcome: Literal["granted", "late", "already_paid"]
        if order.status == "paid":
            outcome = "already_paid"
        elif sent_at > order.expires_at:
            outcome = "late"
        else:
            outcome = "granted"
        raw: dict[str, Any] = {
            "signature": verified.signature,
            "slot": verified.slot,
            "block_time": verified.block_time,
            "lamports": verified.lamports,
            "flags": list(verified.flags),
            "reference": order.reference_key,
        }
        if outcome != "granted":
            raw["refused"] = outcome
        inserted = await conn.fetchval(
            "INSERT INTO payments (order_id, method, tx_signature, amount_lamports, status, raw,"
            " created_at, updated_at) VALUES ($1, 'sol', $2, $3, $4, $5::jsonb, $6, $6)"
            " ON CONFLICT (tx_signature) DO NOTHING RETURNING id",
            order.id,
            verified.signature,
            verified.lamports,
            "confirmed" if outcome == "granted" else "failed",
            json.dumps(raw),
            now,
        )
        if inserted is None:
            return SolOutcome("duplicate", order)
        if outcome != "granted":
            return SolOutcome(outcome, order)
        await conn.execute(
            "UPDATE orders SET status = 'paid', paid_at = $2 WHERE id = $1", order.id, now
        )
        segment = await subscriptions.grant(
            conn,
            chat_id=order.chat_id,
            plan=order.plan,
            duration=order.duration,
            now=now,
            source="payment",
            order_id=order.id,
        )
        return SolOutcome("granted", order, segment)


# -- NOWPayments ----------------------------------------------------------------------------

IpnAction = Literal[
    "granted", "partial", "closed", "revoked", "progress", "refused", "duplicate", "ignored"
]


@dataclass(frozen=True, slots=True)
class IpnOutcome:
    action: IpnAction
    detail: str = ""
    order: Order | None = None
    segment: Segment | None = None
    revoked_user: int | None = None


def _scrub(value: Any) -> Any:
    """PostgreSQL's jsonb refuses NUL characters; the audit copy drops them."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _usd(amount: Decimal) -> Decimal | None:
    """An amount the numeric(12, 2) column can hold, or None."""
    if not amount.is_finite() or abs(amount) >= _MAX_USD:
        return None
    return amount.quantize(_CENT)


async def record_ipn(
    pool: asyncpg.Pool, payload: IpnPayload, now: datetime, *, currency: str
) -> IpnOutcome:
    """Apply one verified IPN to its order, idempotently (see the module docstring)."""
    if payload.order_id is None:
        return IpnOutcome("ignored", "no order_id")
    try:
        order_id = UUID(payload.order_id)
    except ValueError:
        return IpnOutcome("ignored", "order_id is not ours")
    if len(payload.payment_id) > 128:
        return IpnOutcome("ignored", "payment_id is too long")
    target = _IPN_TO_PAYMENT[payload.payment_status]
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1 AND method = 'nowpayments'"  # noqa: S608 - constant column list; values are parameters
            " FOR UPDATE",
            order_id,
        )
        if row is None:
            return IpnOutcome("ignored", "unknown order")
        order = _order(row)
        amount_ok = (
            payload.price_currency == currency.lower()
            and payload.price_amount.is_finite()
            and payload.price_amount == order.amount_usd
        )
        refused_reason: str | None = None
        if target == "confirmed":
            if not amount_ok:
                target, refused_reason = "failed", "amount or currency does not match the order"
            elif order.status == "paid":
                target, refused_reason = "failed", "order already paid by another payment"
        existing = await conn.fetchrow(
            "SELECT id, order_id, status FROM payments WHERE provider_payment_id = $1 FOR UPDATE",
            payload.payment_id,
        )
        if existing is not None and existing["order_id"] != order.id:
            return IpnOutcome("ignored", "payment belongs to another order", order)
        previous = None if existing is None else existing["status"]
        if previous is not None and _RANK[target] <= _RANK[previous]:
            return IpnOutcome("duplicate", f"{previous} already recorded", order)
        raw = dict(payload.raw)
        if refused_reason is not None:
            raw["refused"] = refused_reason
        raw_json = json.dumps(_scrub(raw), default=str)
        if existing is None:
            await conn.execute(
                "INSERT INTO payments (order_id, method, provider_payment_id, amount_usd, status,"
                " raw, created_at, updated_at) VALUES ($1, 'nowpayments', $2, $3, $4, $5::jsonb,"
                " $6, $6)",
                order.id,
                payload.payment_id,
                _usd(payload.price_amount),
                target,
                raw_json,
                now,
            )
        else:
            await conn.execute(
                "UPDATE payments SET status = $2, amount_usd = $3, raw = $4::jsonb,"
                " updated_at = $5 WHERE id = $1",
                existing["id"],
                target,
                _usd(payload.price_amount),
                raw_json,
                now,
            )

        if refused_reason is not None:
            return IpnOutcome("refused", refused_reason, order)
        if target == "confirmed":
            await conn.execute(
                "UPDATE orders SET status = 'paid', paid_at = $2 WHERE id = $1", order.id, now
            )
            segment = await subscriptions.grant(
                conn,
                chat_id=order.chat_id,
                plan=order.plan,
                duration=order.duration,
                now=now,
                source="payment",
                order_id=order.id,
            )
            return IpnOutcome("granted", order=order, segment=segment)
        if target == "refunded":
            revoked = None
            if previous == "confirmed":
                revoked = await subscriptions.revoke_order(
                    conn, order.id, now=now, by=None, reason="payment refunded"
                )
            return IpnOutcome("revoked", order=order, revoked_user=revoked)
        if target == "failed":
            if order.status == "pending":
                closed = "expired" if payload.payment_status is PaymentStatus.EXPIRED else "failed"
                await conn.execute("UPDATE orders SET status = $2 WHERE id = $1", order.id, closed)
                await release(conn, order.id)
                return IpnOutcome("closed", payload.payment_status.value, order)
            return IpnOutcome("duplicate", f"order is {order.status}", order)
        if target == "partially_paid":
            return IpnOutcome("partial", order=order)
        return IpnOutcome("progress", payload.payment_status.value, order)


# -- reconciliation -------------------------------------------------------------------------


async def reconcile(conn: Conn | asyncpg.Pool, since: datetime, until: datetime) -> ReconcileReport:
    """Every order with payment or grant activity in [since, until), and what disagrees."""
    rows = await conn.fetch(
        """
        SELECT o.id, o.chat_id, o.method, o.plan, o.status AS order_status,
               o.amount_lamports AS order_lamports, o.amount_usd AS order_usd, o.paid_at,
               o.created_at AS order_created,
               p.status AS payment_status, coalesce(p.tx_signature, p.provider_payment_id) AS ref,
               p.amount_lamports AS paid_lamports, p.amount_usd AS paid_usd,
               p.raw ->> 'refused' AS refused, p.created_at AS paid_seen,
               s.id AS subscription_id, s.revoked_at, s.created_at AS granted_at
        FROM orders o
        LEFT JOIN payments p ON p.order_id = o.id
        LEFT JOIN subscriptions s ON s.order_id = o.id
        WHERE (p.created_at >= $1 AND p.created_at < $2)
           OR (p.updated_at >= $1 AND p.updated_at < $2)
           OR (s.created_at >= $1 AND s.created_at < $2)
           OR (o.paid_at >= $1 AND o.paid_at < $2)
        ORDER BY coalesce(p.created_at, s.created_at, o.paid_at, o.created_at), o.id
        """,
        since,
        until,
    )
    out_rows: list[ReconcileRow] = []
    by_order: dict[UUID, list[asyncpg.Record]] = defaultdict(list)
    for row in rows:
        by_order[row["id"]].append(row)
        out_rows.append(
            ReconcileRow(
                order_id=str(row["id"]),
                user_id=row["chat_id"],
                method=row["method"],
                plan=row["plan"],
                order_status=row["order_status"],
                payment_status=row["payment_status"],
                payment_ref=row["ref"],
                order_lamports=row["order_lamports"],
                order_usd=row["order_usd"],
                paid_lamports=row["paid_lamports"],
                paid_usd=row["paid_usd"],
                granted=row["subscription_id"] is not None,
                revoked=row["revoked_at"] is not None,
                at=row["paid_seen"] or row["granted_at"] or row["paid_at"] or row["order_created"],
            )
        )
    mismatches: list[Mismatch] = []
    for order_id, group in by_order.items():
        first = group[0]
        user = first["chat_id"]

        def flag(kind: str, detail: str, oid: UUID = order_id, uid: int = user) -> None:
            mismatches.append(Mismatch(kind=kind, order_id=str(oid), user_id=uid, detail=detail))

        granted = first["subscription_id"] is not None
        revoked = first["revoked_at"] is not None
        statuses = [r["payment_status"] for r in group if r["payment_status"] is not None]
        paying = [r for r in group if r["payment_status"] in ("confirmed", "refunded")]
        for r in group:
            if r["payment_status"] == "confirmed" and not granted:
                flag("paid_not_granted", f"payment {r['ref']} confirmed, no subscription")
            if r["payment_status"] == "refunded" and granted and not revoked:
                flag("refunded_not_revoked", f"payment {r['ref']} refunded, grant still live")
            if r["payment_status"] == "confirmed":
                if first["method"] == "sol" and r["paid_lamports"] != first["order_lamports"]:
                    flag(
                        "amount_mismatch",
                        f"paid {r['paid_lamports']} lamports, order asks {first['order_lamports']}",
                    )
                if first["method"] == "nowpayments" and r["paid_usd"] != first["order_usd"]:
                    flag(
                        "amount_mismatch",
                        f"paid {r['paid_usd']} USD, order asks {first['order_usd']}",
                    )
            if r["payment_status"] == "failed" and r["refused"]:
                flag("received_not_granted", f"payment {r['ref']}: {r['refused']}")
        if granted and not paying:
            detail = "payments: " + ", ".join(statuses) if statuses else "no payment at all"
            flag("granted_not_paid", f"subscription without a confirmed payment ({detail})")
        elif first["order_status"] == "paid" and not paying:
            flag("paid_order_without_payment", "order marked paid without a confirmed payment")
    return ReconcileReport(
        since=since, until=until, rows=tuple(out_rows), mismatches=tuple(mismatches)
    )
