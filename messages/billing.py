"""Messages between the bot front end / admin and the payments actor, and their replies.

Every reply is plain data the bot can render without asking anything else: amounts come
both as integers (lamports) and as display text, times as aware UTC datetimes, and any
refusal carries a reason written for the user (`Refused.reason`), never an internal error.
Admin commands trust their sender: the admin actor checks who is an admin before it asks.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec

from messages.payments import IpnPayload, Plan

__all__ = [
    "CouponInfo",
    "CouponKind",
    "CouponList",
    "CreateCoupon",
    "CreateOrder",
    "ExtendSubscription",
    "GrantSubscription",
    "IpnReceived",
    "ListCoupons",
    "ListPlans",
    "Mismatch",
    "OrderCreated",
    "PayMethod",
    "PlanList",
    "PlanQuote",
    "PollNow",
    "PollSummary",
    "Reconcile",
    "ReconcileReport",
    "ReconcileRow",
    "RedeemCoupon",
    "RedeemResult",
    "Refused",
    "RevokeSubscription",
    "SolPaymentOutcome",
    "SolPaymentVerified",
    "SubscriptionChanged",
    "SubscriptionInfo",
    "SubscriptionStatus",
    "SweepNow",
    "SweepSummary",
]

PayMethod = Literal["sol", "nowpayments"]
CouponKind = Literal["percent", "fixed", "free_days"]


class Refused(msgspec.Struct, frozen=True):
    """The request was not carried out; `reason` is meant for the user (or the admin)."""

    reason: str


# -- user side ---------------------------------------------------------------------------


class ListPlans(msgspec.Struct, frozen=True):
    """Ask for the plans and prices; the reply is a :class:`PlanList`."""


class PlanQuote(msgspec.Struct, frozen=True, kw_only=True):
    plan: Plan
    lamports: int
    sol: str
    """The SOL price as exact decimal text ("1.5")."""
    usd: Decimal
    days: int | None
    """None for lifetime."""


class PlanList(msgspec.Struct, frozen=True, kw_only=True):
    plans: tuple[PlanQuote, ...]
    methods: tuple[PayMethod, ...]
    """Payment methods configured right now (empty: payments are switched off)."""


class CreateOrder(msgspec.Struct, frozen=True, kw_only=True):
    """Start paying for a plan. Reply: :class:`OrderCreated`, :class:`RedeemResult` (a coupon
    made it free) or :class:`Refused`. Without `coupon`, a coupon staged by /redeem applies."""

    user_id: int
    plan: Plan
    method: PayMethod
    coupon: str | None = None


class OrderCreated(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    plan: Plan
    method: PayMethod
    pay_url: str
    """The Solana Pay link (sol) or the NOWPayments invoice page (nowpayments)."""
    expires_at: datetime
    amount_lamports: int | None = None
    amount_sol: str | None = None
    amount_usd: Decimal | None = None
    reference: str | None = None
    memo: str | None = None
    coupon: str | None = None
    discount: str | None = None
    """Human text such as "20% off" when a coupon applied."""


class RedeemCoupon(msgspec.Struct, frozen=True, kw_only=True):
    """/redeem CODE. Free-days coupons grant at once; discount coupons are staged for the
    user's next order. Reply: :class:`RedeemResult`."""

    user_id: int
    code: str


class SubscriptionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Ask for one user's subscription; the reply is a :class:`SubscriptionInfo`."""

    user_id: int


class SubscriptionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A user's subscription as of `as_of`. `expires_at` is None when never subscribed or
    lifetime (then `lifetime` is True)."""

    user_id: int
    active: bool
    plan: str | None = None
    expires_at: datetime | None = None
    lifetime: bool = False
    as_of: datetime | None = None


class RedeemResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    text: str
    """Ready to show the user."""
    subscription: SubscriptionInfo | None = None
    staged_coupon: str | None = None
    """A discount coupon now waiting for the user's next order."""


class SubscriptionChanged(msgspec.Struct, frozen=True):
    """Told to `user:<id>` whenever that user's subscription was granted, extended, revoked
    or ran out: read the new state (PostgreSQL, or the Redis cache) and act on it."""

    user_id: int


# -- admin side --------------------------------------------------------------------------


class GrantSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """Grant a plan, or `days` of a custom plan, extending from the current expiry.
    Reply: :class:`SubscriptionInfo` or :class:`Refused`."""

    user_id: int
    by: int
    plan: Plan | None = None
    days: int | None = None


class ExtendSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """Add `days` to the user's current subscription (or start one)."""

    user_id: int
    days: int
    by: int


class RevokeSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """End every running and future subscription segment of the user now."""

    user_id: int
    by: int
    reason: str = "revoked by an admin"


class CreateCoupon(msgspec.Struct, frozen=True, kw_only=True):
    """`percent`: value % off; `fixed`: value USD off; `free_days`: value days, no payment.
    Reply: :class:`CouponInfo` or :class:`Refused`."""

    code: str
    kind: CouponKind
    value: Decimal
    max_uses: int | None = None
    expires_at: datetime | None = None
    plan: Plan | None = None
    by: int | None = None


class CouponInfo(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    kind: CouponKind
    value: Decimal
    uses: int
    max_uses: int | None
    expires_at: datetime | None
    plan: str | None
    disabled: bool
    created_at: datetime


class ListCoupons(msgspec.Struct, frozen=True):
    """Reply: :class:`CouponList`, newest first."""


class CouponList(msgspec.Struct, frozen=True):
    coupons: tuple[CouponInfo, ...]


class Reconcile(msgspec.Struct, frozen=True, kw_only=True):
    """List payments and grants in [since, until) and flag every mismatch between them.
    Reply: :class:`ReconcileReport`."""

    since: datetime
    until: datetime


class ReconcileRow(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    user_id: int
    method: str
    plan: str
    order_status: str
    payment_status: str | None
    payment_ref: str | None
    """The transaction signature or the NOWPayments payment id."""
    order_lamports: int | None
    order_usd: Decimal | None
    paid_lamports: int | None
    paid_usd: Decimal | None
    granted: bool
    revoked: bool
    at: datetime


class Mismatch(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    """paid_not_granted, granted_not_paid, refunded_not_revoked, amount_mismatch,
    paid_order_without_payment, received_not_granted."""
    order_id: str
    user_id: int
    detail: str


class ReconcileReport(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime
    rows: tuple[ReconcileRow, ...]
    mismatches: tuple[Mismatch, ...]


# -- inside the payments subtree -----------------------------------------------------------


class IpnReceived(msgspec.Struct, frozen=True):
    """A NOWPayments IPN whose signature checked out (from the IPN listener)."""

    payload: IpnPayload


class SolPaymentVerified(msgspec.Struct, frozen=True, kw_only=True):
    """The poller found a finalized transfer that `verify_transfer` accepted for an order.
    Reply: :class:`SolPaymentOutcome`."""

    order_id: str
    signature: str
    lamports: int
    slot: int | None = None
    block_time: int | None = None
    flags: tuple[str, ...] = ()


class SolPaymentOutcome(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Literal["granted", "duplicate", "late", "already_paid", "unknown_order"]
    user_id: int | None = None


class PollNow(msgspec.Struct, frozen=True):
    """Ask the SOL poller to poll once now; reply :class:`PollSummary`."""


class PollSummary(msgspec.Struct, frozen=True, kw_only=True):
    orders: int
    signatures: int
    granted: int
    refused: int


class SweepNow(msgspec.Struct, frozen=True):
    """Ask the payments actor to close expired orders and send due reminders now;
    reply :class:`SweepSummary`."""


class SweepSummary(msgspec.Struct, frozen=True, kw_only=True):
    orders_closed: int
    reminders: int
    expired: int
