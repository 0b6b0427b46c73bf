"""Subscriptions, coupons, reminders and admin commands through the payments actor."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import anyio
import pytest

from actors import coupons, subscriptions
from actors.subscriptions import LIFETIME_END, cached_status
from messages.billing import (
    CouponList,
    CreateCoupon,
    CreateOrder,
    ExtendSubscription,
    GrantSubscription,
    ListCoupons,
    ListPlans,
    OrderCreated,
    PlanList,
    Reconcile,
    RedeemCoupon,
    RedeemResult,
    Refused,
    RevokeSubscription,
    SubscriptionInfo,
    SubscriptionStatus,
    SweepNow,
    SweepSummary,
)
from messages.delivery import Lane
from messages.payments import Plan
from tests.helpers import eventually
from tests.payments.conftest import OTHER, USER, Billing, BillingFactory

pytestmark = pytest.mark.anyio
ADMIN = 1


async def status(billing: Billing, user: int = USER) -> SubscriptionInfo:
    info = await billing.ask(SubscriptionStatus(user_id=user))
    assert isinstance(info, SubscriptionInfo)
    return info


async def coupon(billing: Billing, code: str, kind: str, value: str, **kw: object) -> None:
    made = await billing.ask(
        CreateCoupon(code=code, kind=kind, value=Decimal(value), by=ADMIN, **kw)
    )  # type: ignore[arg-type]
    assert not isinstance(made, Refused), made


async def redeem(billing: Billing, code: str, user: int = USER) -> RedeemResult:
    result = await billing.ask(RedeemCoupon(user_id=user, code=code))
    assert isinstance(result, RedeemResult)
    return result


async def test_plans_list_prices_and_methods(billing: Billing) -> None:
    plans = await billing.ask(ListPlans())
    assert isinstance(plans, PlanList)
    assert plans.methods == ("sol", "nowpayments")
    by_plan = {q.plan: q for q in plans.plans}
    assert by_plan[Plan.WEEKLY].days == 7 and by_plan[Plan.LIFETIME].days is None
    assert by_plan[Plan.MONTHLY].sol == "1.5" and by_plan[Plan.MONTHLY].usd == Decimal("225")


async def test_renewals_extend_from_the_current_expiry(billing: Billing) -> None:
    start = billing.now()
    first = await billing.ask(GrantSubscription(user_id=USER, plan=Plan.MONTHLY, by=ADMIN))
    assert first.expires_at == start + timedelta(days=30)

    await billing.clock.advance(86400 * 10)
    second = await billing.ask(GrantSubscription(user_id=USER, plan=Plan.WEEKLY, by=ADMIN))
    assert second.expires_at == start + timedelta(days=37)
    third = await billing.ask(ExtendSubscription(user_id=USER, days=3, by=ADMIN))
    assert third.expires_at == start + timedelta(days=40)
    assert third.plan == "monthly"  # the running segment is still the first one

    # After it ran out, a renewal starts from now, not from the old expiry.
    await billing.clock.advance(86400 * 35)
    assert not (await status(billing)).active
    renewed = await billing.ask(GrantSubscription(user_id=USER, days=2, by=ADMIN))
    assert renewed.expires_at == billing.now() + timedelta(days=2)
    # Four grants, and the expiry the sweep timer noticed on the way.
    assert len(billing.changes) == 5
    assert len(billing.texts("expired")) == 1


async def test_concurrent_renewals_still_chain(billing: Billing) -> None:
    now = billing.now()

    async def one() -> None:
        async with billing.pool.acquire() as conn, conn.transaction():
            await subscriptions.grant(
                conn,
                chat_id=OTHER,
                plan="daily",
                duration=timedelta(days=1),
                now=now,
                source="admin",
            )

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    info = await subscriptions.status(billing.pool, OTHER, now)
    assert info.expires_at == now + timedelta(days=5)


async def test_lifetime(billing: Billing) -> None:
    info = await billing.ask(GrantSubscription(user_id=USER, plan=Plan.LIFETIME, by=ADMIN))
    assert info.active and info.lifetime and info.expires_at is None
    stored = await billing.pool.fetchval("SELECT expires_at FROM subscriptions")
    assert subscriptions.is_lifetime(stored) and subscriptions.is_lifetime(LIFETIME_END)
    assert await billing.pool.fetchval("SELECT isfinite(expires_at) FROM subscriptions") is False
    refused = await billing.ask(CreateOrder(user_id=USER, plan=Plan.MONTHLY, method="sol"))
    assert refused == Refused("You already have a lifetime subscription.")
    await billing.clock.advance(86400 * 60)
    assert (await status(billing)).active


async def test_admin_revoke_ends_it_and_tells_the_user_actor(billing: Billing) -> None:
    await billing.ask(GrantSubscription(user_id=USER, plan=Plan.MONTHLY, by=ADMIN))
    await billing.ask(GrantSubscription(user_id=USER, plan=Plan.MONTHLY, by=ADMIN))
    info = await billing.ask(RevokeSubscription(user_id=USER, by=ADMIN))
    assert isinstance(info, SubscriptionInfo) and not info.active
    assert len(billing.changes) == 3
    again = await billing.ask(RevokeSubscription(user_id=USER, by=ADMIN))
    assert isinstance(again, Refused)
    cached = await cached_status(billing.store, USER, billing.now())
    assert not cached.active


async def test_refund_of_one_segment_pulls_later_ones_back(billing: Billing) -> None:
    now = billing.now()
    async with billing.pool.acquire() as conn, conn.transaction():
        await subscriptions.ensure_user(conn, USER)
        order_id = await conn.fetchval(
            "INSERT INTO orders (chat_id, plan, method, amount_usd, reference_key, created_at,"
            " expires_at, status, paid_at) VALUES ($1, 'weekly', 'nowpayments', 75, 'r1', $2,"
            " $3, 'paid', $2) RETURNING id",
            USER,
            now,
            now + timedelta(hours=1),
        )
        await subscriptions.grant(
            conn,
            chat_id=USER,
            plan="monthly",
            duration=timedelta(days=30),
            now=now,
            source="admin",
        )
        await subscriptions.grant(
            conn,
            chat_id=USER,
            plan="weekly",
            duration=timedelta(days=7),
            now=now,
            source="payment",
            order_id=order_id,
        )
        await subscriptions.grant(
            conn,
            chat_id=USER,
            plan="daily",
            duration=timedelta(days=1),
            now=now,
            source="admin",
        )
    assert (await subscriptions.status(billing.pool, USER, now)).expires_at == now + timedelta(
        days=38
    )
    async with billing.pool.acquire() as conn, conn.transaction():
        assert (
            await subscriptions.revoke_order(conn, order_id, now=now, by=None, reason="refund")
            == USER
        )
    info = await subscriptions.status(billing.pool, USER, now)
    assert info.expires_at == now + timedelta(days=31)
    later = now + timedelta(days=30, hours=12)
    assert await subscriptions.is_active(billing.pool, USER, later)


async def test_cache_is_written_after_the_commit_and_refilled_on_a_miss(billing: Billing) -> None:
    await billing.ask(GrantSubscription(user_id=USER, plan=Plan.WEEKLY, by=ADMIN))
    key = f"callwatch:sub:{USER}"
    ttl = await billing.redis.ttl(key)
    assert 0 < ttl <= 7 * 86400
    await billing.redis.delete(key)
    info = await cached_status(billing.store, USER, billing.now())
    assert info.active and info.plan == "weekly"
    assert await billing.redis.exists(key)
    # An entry past its expiry reads as inactive even before Redis drops it.
    later = billing.now() + timedelta(days=8)
    assert not (await cached_status(billing.store, USER, later)).active


# -- coupons -------------------------------------------------------------------------------


async def test_free_days_coupon_max_uses_and_once_per_user(billing: Billing) -> None:
    await coupon(billing, "WELCOME7", "free_days", "7", max_uses=2)
    first = await redeem(billing, "welcome7")
    assert first.ok and first.subscription is not None
    assert first.subscription.expires_at == billing.now() + timedelta(days=7)
    assert "7 free days" in first.text

    again = await redeem(billing, "WELCOME7")
    assert not again.ok and "already used" in again.text
    assert (await redeem(billing, "WELCOME7", OTHER)).ok
    used_up = await redeem(billing, "WELCOME7", 999)
    assert not used_up.ok and "used up" in used_up.text
    assert not (await redeem(billing, "NOSUCHCODE")).ok
    assert not (await redeem(billing, "x" * 500)).ok

    [listed] = (await billing.ask(ListCoupons())).coupons
    assert listed.uses == 2 and listed.max_uses == 2


async def test_max_uses_hold_under_concurrent_redemptions(billing: Billing) -> None:
    await coupon(billing, "ONLYONE", "free_days", "1", max_uses=1)
    now = billing.now()
    results: list[bool] = []

    async def attempt(user: int) -> None:
        try:
            async with billing.pool.acquire() as conn, conn.transaction():
                found = await coupons.lock_usable(conn, "ONLYONE", user, now)
                await coupons.consume(conn, found, user, now)
            results.append(True)
        except coupons.CouponError:
            results.append(False)

    async with anyio.create_task_group() as tg:
        for user in range(100, 106):
            tg.start_soon(attempt, user)
    assert sorted(results) == [False] * 5 + [True]
    assert await billing.count("SELECT uses FROM coupons") == 1


async def test_coupon_expiry(billing: Billing) -> None:
    await coupon(billing, "SOON", "free_days", "1", expires_at=billing.now() + timedelta(hours=1))
    await billing.clock.advance(7200)
    result = await redeem(billing, "SOON")
    assert not result.ok and "expired" in result.text
    past = await billing.ask(
        CreateCoupon(code="PAST", kind="percent", value=Decimal(10), expires_at=billing.now())
    )
    assert isinstance(past, Refused)


async def test_invalid_coupons_are_refused_by_admin(billing: Billing) -> None:
    bad = [
        CreateCoupon(code="no spaces", kind="percent", value=Decimal(10)),
        CreateCoupon(code="HALF", kind="percent", value=Decimal(150)),
        CreateCoupon(code="HALF", kind="percent", value=Decimal("-1")),
        CreateCoupon(code="DAYS", kind="free_days", value=Decimal("1.5")),
        CreateCoupon(code="DAYS", kind="free_days", value=Decimal(3), max_uses=0),
    ]
    for request in bad:
        assert isinstance(await billing.ask(request), Refused), request
    await coupon(billing, "dup", "fixed", "5")
    assert isinstance(
        await billing.ask(CreateCoupon(code="DUP", kind="fixed", value=Decimal(1))), Refused
    )
    listed = await billing.ask(ListCoupons())
    assert isinstance(listed, CouponList) and [c.code for c in listed.coupons] == ["dup"]


async def test_percent_coupon_discounts_a_sol_order_and_is_released_when_unpaid(
    make_billing: BillingFactory,
) -> None:
    billing = await make_billing()
    await coupon(billing, "TWENTY", "percent", "20", max_uses=1)
    order = await billing.ask(
        CreateOrder(user_id=USER, plan=Plan.MONTHLY, method="sol", coupon="twenty")
    )
    assert isinstance(order, OrderCreated)
    assert order.amount_lamports == 1_200_000_000 and order.amount_usd == Decimal("180.00")
    assert order.discount == "20% off" and order.coupon == "TWENTY"
    taken = await billing.ask(
        CreateOrder(user_id=OTHER, plan=Plan.DAILY, method="sol", coupon="TWENTY")
    )
    assert isinstance(taken, Refused) and "used up" in taken.reason

    await billing.clock.advance(billing.settings.order_ttl_s + billing.settings.settle_grace_s + 1)
    swept = await billing.ask(SweepNow())
    assert isinstance(swept, SweepSummary) and swept.orders_closed == 1
    assert await billing.count("SELECT uses FROM coupons") == 0
    again = await billing.ask(
        CreateOrder(user_id=USER, plan=Plan.MONTHLY, method="sol", coupon="TWENTY")
    )
    assert isinstance(again, OrderCreated) and again.amount_lamports == 1_200_000_000


async def test_redeemed_fixed_coupon_is_staged_for_the_next_invoice(billing: Billing) -> None:
    await coupon(billing, "FIVEOFF", "fixed", "5", plan=Plan.WEEKLY)
    staged = await redeem(billing, "FIVEOFF")
    assert staged.ok and staged.staged_coupon == "FIVEOFF" and "$5.00 off" in staged.text

    wrong_plan = await billing.ask(CreateOrder(user_id=USER, plan=Plan.DAILY, method="nowpayments"))
    assert isinstance(wrong_plan, Refused) and "weekly" in wrong_plan.reason

    assert await redeem(billing, "FIVEOFF")  # stage it again
    order = await billing.ask(CreateOrder(user_id=USER, plan=Plan.WEEKLY, method="nowpayments"))
    assert isinstance(order, OrderCreated) and order.amount_usd == Decimal("70.00")
    assert billing.gateway.find_invoice(order.order_id).price_amount == 70
    # The stage is used up: the next order pays the full price.
    full = await billing.ask(CreateOrder(user_id=USER, plan=Plan.WEEKLY, method="nowpayments"))
    assert isinstance(full, OrderCreated) and full.amount_usd == Decimal("75")


async def test_full_discount_grants_without_payment(billing: Billing) -> None:
    await coupon(billing, "FREEMONTH", "percent", "100")
    result = await billing.ask(
        CreateOrder(user_id=USER, plan=Plan.MONTHLY, method="sol", coupon="FREEMONTH")
    )
    assert isinstance(result, RedeemResult) and result.ok
    assert result.subscription is not None and result.subscription.plan == "monthly"
    assert await billing.count("SELECT count(*) FROM orders") == 0
    assert await billing.pool.fetchval("SELECT source FROM subscriptions") == "coupon"


# -- reminders and expiry --------------------------------------------------------------------


async def test_reminder_once_then_expiry_stops_notifications(make_billing: BillingFactory) -> None:
    billing = await make_billing(sweep_interval_s=3600.0)
    await billing.ask(GrantSubscription(user_id=USER, plan=Plan.WEEKLY, by=ADMIN))
    billing.sent.clear()
    billing.changes.clear()

    assert (await billing.ask(SweepNow())).reminders == 0
    await billing.clock.advance(6 * 86400)  # the hourly sweep timer runs on the way
    await eventually(lambda: any(m.kind == "reminder" for m in billing.sent))
    await billing.settled()
    reminders = [m for m in billing.sent if m.kind == "reminder"]
    assert len(reminders) == 1
    assert reminders[0].lane == Lane.ALERT and reminders[0].chat_id == USER
    assert reminders[0].dedup_key is not None and "ends on" in reminders[0].text
    assert (await billing.ask(SweepNow())).reminders == 0

    await billing.clock.advance(86400 + 1)
    await eventually(lambda: any(m.kind == "expired" for m in billing.sent))
    assert (await billing.ask(SweepNow())).expired == 0
    expired = [m for m in billing.sent if m.kind == "expired"]
    assert len(expired) == 1 and "notifications have stopped" in expired[0].text
    assert expired[0].lane == Lane.ALERT
    assert len([m for m in billing.sent if m.kind == "reminder"]) == 1
    assert billing.changes and billing.changes[-1].user_id == USER
    assert not (await status(billing)).active
    assert not (await cached_status(billing.store, USER, billing.now())).active


async def test_a_renewal_moves_the_reminder_to_the_new_end(billing: Billing) -> None:
    await billing.ask(GrantSubscription(user_id=USER, plan=Plan.DAILY, by=ADMIN))
    first = await billing.ask(SweepNow())
    assert first.reminders == 1  # a daily plan is always within a day of its end
    await billing.ask(GrantSubscription(user_id=USER, plan=Plan.WEEKLY, by=ADMIN))
    assert (await billing.ask(SweepNow())).reminders == 0
    await billing.clock.advance(7 * 86400)
    await billing.ask(SweepNow())
    assert len([m for m in billing.sent if m.kind == "reminder"]) == 2
    assert not [m for m in billing.sent if m.kind == "expired"]


# -- reconciliation ---------------------------------------------------------------------------


async def test_reconcile_flags_a_payment_without_its_grant(billing: Billing) -> None:
    order = await billing.ask(CreateOrder(user_id=USER, plan=Plan.DAILY, method="nowpayments"))
    await billing.gateway.send_ipn(order.order_id, "finished")
    await billing.settled()
    window = Reconcile(
        since=billing.now() - timedelta(hours=1), until=billing.now() + timedelta(hours=1)
    )
    clean = await billing.ask(window)
    assert clean.mismatches == () and len(clean.rows) == 1 and clean.rows[0].granted

    await billing.pool.execute("DELETE FROM subscriptions")
    broken = await billing.ask(window)
    assert [(m.kind, m.order_id) for m in broken.mismatches] == [
        ("paid_not_granted", order.order_id)
    ]

    await billing.pool.execute("UPDATE payments SET amount_usd = 1")
    await billing.pool.execute(
        "INSERT INTO subscriptions (chat_id, plan, starts_at, expires_at, source, order_id)"
        " VALUES ($1, 'daily', $2, $3, 'payment', $4)",
        USER,
        billing.now(),
        billing.now() + timedelta(days=1),
        UUID(order.order_id),
    )
    kinds = {m.kind for m in (await billing.ask(window)).mismatches}
    assert kinds == {"amount_mismatch"}
