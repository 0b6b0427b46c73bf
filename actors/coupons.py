"""Coupons: percent or fixed (USD) discounts on an order, or free days granted at once.

Every limit is enforced inside the caller's transaction with the coupon row locked: max
uses (and the table's own CHECK as a backstop), one redemption per user (the UNIQUE on
`coupon_redemptions` as a backstop), expiry and disabling. A discount coupon is claimed
when the order is created and released again if the order expires or fails unpaid, so an
abandoned order does not burn the user's one use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Final
from uuid import UUID

import asyncpg

from actors.subscriptions import Conn, ensure_user
from messages.billing import CouponInfo, CouponKind, CreateCoupon

__all__ = [
    "CODE_RE",
    "Coupon",
    "CouponError",
    "apply_discount",
    "consume",
    "create",
    "describe",
    "list_all",
    "lock_usable",
    "release",
]

CODE_RE: Final = re.compile(r"[A-Za-z0-9_-]{3,32}")
_CENT: Final = Decimal("0.01")
_MAX_VALUE: Final = Decimal("1e9")
_MAX_FREE_DAYS: Final = 36500


class CouponError(Exception):
    """A coupon that cannot be used or created; `reason` is for the user or admin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Coupon:
    id: int
    code: str
    kind: CouponKind
    value: Decimal
    plan: str | None
    max_uses: int | None
    uses: int
    expires_at: datetime | None
    disabled_at: datetime | None


_COLUMNS: Final = "id, code, kind, value, plan, max_uses, uses, expires_at, disabled_at"


def _coupon(row: asyncpg.Record) -> Coupon:
    return Coupon(**dict(row))


def describe(coupon: Coupon) -> str:
    """ "20% off", "$5.00 off", "7 free days"."""
    if coupon.kind == "percent":
        return f"{coupon.value.normalize():f}% off"
    if coupon.kind == "fixed":
        return f"${coupon.value.quantize(_CENT)} off"
    days = int(coupon.value)
    return f"{days} free day{'s' if days != 1 else ''}"


def apply_discount(coupon: Coupon, lamports: int, usd: Decimal) -> tuple[int, Decimal]:
    """The order's amounts after a discount coupon; (0, 0) when it makes the order free.

    A fixed (USD) discount is converted to lamports at the plan's own SOL/USD ratio.
    """
    if coupon.kind == "percent":
        factor = (Decimal(100) - coupon.value) / Decimal(100)
    elif coupon.kind == "fixed":
        factor = max(Decimal(0), usd - coupon.value) / usd
    else:
        raise ValueError("free-days coupons do not discount")
    new_usd = (usd * factor).quantize(_CENT, ROUND_HALF_UP)
    new_lamports = int((Decimal(lamports) * factor).to_integral_value(ROUND_HALF_UP))
    if new_usd <= 0 or new_lamports <= 0:
        return 0, Decimal(0)
    return new_lamports, new_usd


def _check_code(code: str) -> str:
    code = code.strip() if isinstance(code, str) else ""
    if not CODE_RE.fullmatch(code):
        raise CouponError("There is no such coupon.")
    return code


async def lock_usable(
    conn: Conn, code: str, chat_id: int, now: datetime, *, plan: str | None = None
) -> Coupon:
    """The coupon, locked for this transaction, if `chat_id` may use it now (for `plan`)."""
    code = _check_code(code)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM coupons WHERE upper(code) = upper($1) FOR UPDATE",  # noqa: S608 - constant column list; values are parameters
        code,
    )
    if row is None:
        raise CouponError("There is no such coupon.")
    coupon = _coupon(row)
    if coupon.disabled_at is not None:
        raise CouponError(f"Coupon {coupon.code} is no longer valid.")
    if coupon.expires_at is not None and coupon.expires_at <= now:
        raise CouponError(f"Coupon {coupon.code} has expired.")
    if coupon.max_uses is not None and coupon.uses >= coupon.max_uses:
        raise CouponError(f"Coupon {coupon.code} has been used up.")
    if plan is not None and coupon.plan is not None and coupon.plan != plan:
        raise CouponError(f"Coupon {coupon.code} is only valid for the {coupon.plan} plan.")
    used = await conn.fetchval(
        "SELECT 1 FROM coupon_redemptions WHERE coupon_id = $1 AND chat_id = $2",
        coupon.id,
        chat_id,
    )
    if used is not None:
        raise CouponError(f"You have already used coupon {coupon.code}.")
    return coupon


async def consume(
    conn: Conn, coupon: Coupon, chat_id: int, now: datetime, order_id: UUID | None = None
) -> None:
    """Record the redemption and count the use (inside the same transaction as the lock)."""
    await ensure_user(conn, chat_id)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO coupon_redemptions (coupon_id, chat_id, order_id, redeemed_at)"
                " VALUES ($1, $2, $3, $4)",
                coupon.id,
                chat_id,
                order_id,
                now,
            )
            await conn.execute("UPDATE coupons SET uses = uses + 1 WHERE id = $1", coupon.id)
    except asyncpg.UniqueViolationError:
        raise CouponError(f"You have already used coupon {coupon.code}.") from None
    except asyncpg.CheckViolationError:
        raise CouponError(f"Coupon {coupon.code} has been used up.") from None


async def release(conn: Conn, order_id: UUID) -> str | None:
    """Give back the use an unpaid order claimed; returns the coupon code, if any."""
    coupon_id = await conn.fetchval(
        "DELETE FROM coupon_redemptions WHERE order_id = $1 RETURNING coupon_id", order_id
    )
    if coupon_id is None:
        return None
    code: str | None = await conn.fetchval(
        "UPDATE coupons SET uses = uses - 1 WHERE id = $1 AND uses > 0 RETURNING code", coupon_id
    )
    return code


def _validate(request: CreateCoupon) -> None:
    if not isinstance(request.code, str) or not CODE_RE.fullmatch(request.code):
        raise CouponError("A coupon code is 3 to 32 letters, digits, '_' or '-'.")
    value = request.value
    if not isinstance(value, Decimal) or not value.is_finite() or not 0 < value < _MAX_VALUE:
        raise CouponError("The value must be a positive number.")
    if value != value.quantize(_CENT):
        raise CouponError("The value may have at most 2 decimals.")
    if request.kind == "percent" and value > 100:
        raise CouponError("A percent discount is at most 100.")
    if request.kind == "free_days" and (
        value != value.to_integral_value() or value > _MAX_FREE_DAYS
    ):
        raise CouponError(f"Free days must be a whole number up to {_MAX_FREE_DAYS}.")
    if request.kind not in ("percent", "fixed", "free_days"):
        raise CouponError("The kind must be percent, fixed or free_days.")
    if request.max_uses is not None and not 0 < request.max_uses < 2**31:
        raise CouponError("max_uses must be a positive number.")


async def create(conn: Conn | asyncpg.Pool, request: CreateCoupon, now: datetime) -> CouponInfo:
    _validate(request)
    if request.expires_at is not None and request.expires_at <= now:
        raise CouponError("The expiry is in the past.")
    try:
        row = await conn.fetchrow(
            f"INSERT INTO coupons (code, kind, value, plan, max_uses, expires_at, created_by,"  # noqa: S608 - constant column list; values are parameters
            f" created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS},"
            f" created_at",
            request.code,
            request.kind,
            request.value,
            None if request.plan is None else str(request.plan),
            request.max_uses,
            request.expires_at,
            request.by,
            now,
        )
    except asyncpg.UniqueViolationError:
        raise CouponError(f"A coupon named {request.code} already exists.") from None
    except (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError) as exc:
        raise CouponError(f"The database refused this coupon ({type(exc).__name__}).") from None
    assert row is not None
    return _info(row)


def _info(row: asyncpg.Record) -> CouponInfo:
    return CouponInfo(
        code=row["code"],
        kind=row["kind"],
        value=row["value"],
        uses=row["uses"],
        max_uses=row["max_uses"],
        expires_at=row["expires_at"],
        plan=row["plan"],
        disabled=row["disabled_at"] is not None,
        created_at=row["created_at"],
    )


async def list_all(conn: Conn | asyncpg.Pool) -> tuple[CouponInfo, ...]:
    rows = await conn.fetch(f"SELECT {_COLUMNS}, created_at FROM coupons ORDER BY id DESC")  # noqa: S608 - constant column list; values are parameters
    return tuple(_info(row) for row in rows)
