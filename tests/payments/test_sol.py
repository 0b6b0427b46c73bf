"""SOL orders paid on the sandbox Solana node, watched by the real poller."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import anyio
import pytest

from actors import orders
from messages.billing import (
    CreateOrder,
    OrderCreated,
    PollNow,
    PollSummary,
    Reconcile,
    SolPaymentVerified,
    SubscriptionInfo,
    SubscriptionStatus,
    SweepNow,
)
from messages.delivery import Outbound
from messages.payments import Plan
from messages.solana import parse_transfer_url
from runtime import ActorFailed
from tests.helpers import eventually
from tests.payments.conftest import BACKOFF_S, PAYER, USER, WALLET, Billing, BillingFactory

pytestmark = pytest.mark.anyio

TX_CONFIG = {
    "encoding": "jsonParsed",
    "commitment": "finalized",
    "maxSupportedTransactionVersion": 0,
}


async def order_for(billing: Billing, plan: Plan = Plan.MONTHLY, user: int = USER) -> OrderCreated:
    created = await billing.ask(CreateOrder(user_id=user, plan=plan, method="sol"))
    assert isinstance(created, OrderCreated), created
    return created


def pay(billing: Billing, order: OrderCreated, lamports: int | None = None, **kw: Any) -> str:
    assert order.amount_lamports is not None
    kw.setdefault("reference", order.reference)
    return billing.solana.add_transfer(
        source=PAYER,
        destination=WALLET,
        lamports=order.amount_lamports if lamports is None else lamports,
        memo=order.memo,
        **kw,
    )


async def poll(billing: Billing) -> PollSummary:
    summary = await billing.poller.ask(PollNow(), timeout=10)
    assert isinstance(summary, PollSummary)
    return summary


async def payments_rows(billing: Billing) -> int:
    return await billing.count("SELECT count(*) FROM payments")


async def grants(billing: Billing) -> int:
    return await billing.count("SELECT count(*) FROM subscriptions")


async def test_order_is_a_solana_pay_link_with_a_unique_reference(billing: Billing) -> None:
    first = await order_for(billing)
    second = await order_for(billing)
    assert first.reference != second.reference
    request = parse_transfer_url(first.pay_url)
    assert request.recipient == WALLET
    assert request.amount_lamports == first.amount_lamports == billing.settings.monthly_lamports
    assert request.reference == first.reference
    assert request.memo == first.memo and first.order_id in (first.memo or "")
    assert first.amount_sol == "1.5"
    assert first.expires_at == billing.now() + timedelta(seconds=billing.settings.order_ttl_s)
    row = await billing.pool.fetchrow(
        "SELECT status, amount_lamports, reference_key FROM orders WHERE id = $1",
        UUID(first.order_id),
    )
    assert dict(row) == {
        "status": "pending",
        "amount_lamports": first.amount_lamports,
        "reference_key": first.reference,
    }


async def test_exact_payment_grants_once_on_the_poll_timer(make_billing: BillingFactory) -> None:
    billing = await make_billing(poll_interval_s=5.0)
    order = await order_for(billing)
    signature = pay(billing, order)

    await billing.clock.advance(billing.settings.poll_interval_s)
    await eventually(lambda: bool(billing.texts("payment")), timeout=5)

    assert await payments_rows(billing) == 1 and await grants(billing) == 1
    status = await billing.ask(SubscriptionStatus(user_id=USER))
    assert isinstance(status, SubscriptionInfo) and status.active and status.plan == "monthly"
    assert status.expires_at is not None
    assert status.expires_at - billing.now() == timedelta(days=30)
    [message] = billing.sent
    assert isinstance(message, Outbound) and message.chat_id == USER
    assert "1.5 SOL" in message.text and "monthly" in message.text
    assert billing.changes and billing.changes[0].user_id == USER
    assert await billing.redis.get(f"callwatch:sub:{USER}") is not None

    # The node was asked the way the issue requires.
    methods = [(m, p) for m, p in billing.solana.requests]
    assert ("getTransaction", [signature, TX_CONFIG]) in methods
    sig_calls = [p for m, p in methods if m == "getSignaturesForAddress"]
    assert sig_calls and sig_calls[0][0] == order.reference
    assert sig_calls[0][1]["commitment"] == "finalized"

    # Polling again: the order is paid, nothing more happens.
    summary = await poll(billing)
    assert summary.orders == 0 and summary.granted == 0
    assert await payments_rows(billing) == 1 and await grants(billing) == 1
    assert len(billing.texts("payment")) == 1


async def test_the_same_signature_again_grants_nothing(billing: Billing) -> None:
    order = await order_for(billing)
    signature = pay(billing, order)
    assert (await poll(billing)).granted == 1

    again = SolPaymentVerified(
        order_id=order.order_id, signature=signature, lamports=order.amount_lamports or 0
    )
    outcome = await billing.payments.ask(again, timeout=10)
    assert outcome.outcome == "duplicate"
    assert await payments_rows(billing) == 1 and await grants(billing) == 1

    # Even when two writers race on one fresh signature, it is spent once.
    second = await order_for(billing, Plan.WEEKLY)
    racing = pay(billing, second)
    verified = SolPaymentVerified(
        order_id=second.order_id, signature=racing, lamports=second.amount_lamports or 0
    )
    results: list[str] = []

    async def record() -> None:
        result = await orders.record_sol_payment(billing.pool, verified, billing.now())
        results.append(result.outcome)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(record)
    assert sorted(results) == ["duplicate", "duplicate", "duplicate", "granted"]
    assert await grants(billing) == 2


@pytest.mark.parametrize(
    "case",
    ["short_by_one", "over_by_one", "failed_on_chain", "missing_reference", "other_reference"],
)
async def test_transfers_that_do_not_pay_grant_nothing(billing: Billing, case: str) -> None:
    order = await order_for(billing)
    lamports = order.amount_lamports or 0
    if case == "short_by_one":
        pay(billing, order, lamports - 1)
    elif case == "over_by_one":
        pay(billing, order, lamports + 1)
    elif case == "failed_on_chain":
        pay(billing, order, err={"InstructionError": [1, {"Custom": 1}]})
    elif case == "missing_reference":
        pay(billing, order, reference=None)
    else:
        other = await order_for(billing, Plan.DAILY)
        pay(billing, order, reference=other.reference)

    first = await poll(billing)
    await poll(billing)
    assert first.granted == 0
    assert await payments_rows(billing) == 0 and await grants(billing) == 0
    assert not billing.sent and not billing.changes
    status = await billing.pool.fetchval(
        "SELECT status FROM orders WHERE id = $1", UUID(order.order_id)
    )
    assert status == "pending"
    if case in ("short_by_one", "over_by_one", "failed_on_chain"):
        assert first.refused == 1
        # A refused transaction is remembered: the second poll did not fetch it again.
        fetched = [p for m, p in billing.solana.requests if m == "getTransaction"]
        assert len(fetched) == (0 if case == "failed_on_chain" else 1)


async def test_confirmed_but_not_finalized_grants_only_once_finalized(billing: Billing) -> None:
    order = await order_for(billing)
    signature = pay(billing, order, status="confirmed")

    summary = await poll(billing)
    assert summary.signatures == 0 and summary.granted == 0
    assert await grants(billing) == 0

    billing.solana.finalize(signature)
    await poll(billing)  # (a poll the timer queued during the advance may get there first)
    assert await grants(billing) == 1
    assert billing.texts("payment") and "Payment received" in billing.texts("payment")[0]
    assert await grants(billing) == 1


async def test_expired_order_grants_nothing(make_billing: BillingFactory) -> None:
    billing = await make_billing()
    settings = billing.settings
    order = await order_for(billing)
    await billing.clock.advance(settings.order_ttl_s + settings.settle_grace_s + 1)
    assert (await billing.ask(SweepNow())).orders_closed == 1
    assert (await billing.ask(SweepNow())).orders_closed == 0
    pay(billing, order)

    assert (await poll(billing)).orders == 0
    assert await payments_rows(billing) == 0 and await grants(billing) == 0
    status = await billing.pool.fetchval(
        "SELECT status FROM orders WHERE id = $1", UUID(order.order_id)
    )
    assert status == "expired"


async def test_transfer_sent_after_expiry_is_recorded_but_not_granted(
    make_billing: BillingFactory,
) -> None:
    billing = await make_billing()
    settings = billing.settings
    order = await order_for(billing)
    await billing.clock.advance(settings.order_ttl_s + 10)  # expired, still within the grace
    signature = pay(billing, order, block_time=int(billing.clock.wall()))

    assert (await poll(billing)).granted == 0
    assert await grants(billing) == 0
    row = await billing.pool.fetchrow("SELECT status, raw FROM payments")
    assert row["status"] == "failed"
    assert '"refused": "late"' in row["raw"]
    assert any("after the order expired" in text for text in billing.texts("payment"))

    report = await billing.ask(
        Reconcile(since=billing.now() - timedelta(days=1), until=billing.now() + timedelta(days=1))
    )
    kinds = {(m.kind, m.order_id) for m in report.mismatches}
    assert ("received_not_granted", order.order_id) in kinds
    assert any(r.payment_ref == signature for r in report.rows)


async def test_transfer_sent_in_time_but_finalized_late_still_grants(
    make_billing: BillingFactory,
) -> None:
    billing = await make_billing()
    order = await order_for(billing)
    sent_at = int(billing.clock.wall()) + 60
    signature = pay(billing, order, status="confirmed", block_time=sent_at)
    await billing.clock.advance(billing.settings.order_ttl_s + 30)
    billing.solana.finalize(signature)
    await poll(billing)  # (a poll the timer queued during the advance may get there first)
    assert await grants(billing) == 1
    assert billing.texts("payment") and "Payment received" in billing.texts("payment")[0]


@pytest.mark.faults
async def test_rpc_outage_restarts_the_poller_and_the_order_is_still_granted(
    billing: Billing,
) -> None:
    order = await order_for(billing)
    pay(billing, order)
    port = billing.solana.port
    await billing.solana.stop()

    with pytest.raises(ActorFailed):
        await poll(billing)
    await eventually(lambda: billing.poller.state != "running")
    status = billing.tree.status().find("root/billing/sol-poller")
    assert status is not None and "RpcError" in (status.last_error or "")

    await billing.clock.advance(BACKOFF_S)
    await eventually(lambda: billing.poller.state == "running")
    await billing.solana.start(port=port)

    assert (await poll(billing)).granted == 1
    assert await grants(billing) == 1
    after = billing.tree.status().find("root/billing/sol-poller")
    assert after is not None and after.restarts_total >= 1

    # The rest of the payments subtree never noticed.
    payments = billing.tree.status().find("root/billing/payments")
    assert payments is not None and payments.restarts_total == 0


@pytest.mark.faults
async def test_rpc_unhealthy_and_proxy_errors_crash_the_poller_too(billing: Billing) -> None:
    order = await order_for(billing)
    pay(billing, order)
    for mode in ("http", "rpc"):
        billing.solana.fail_next(1, mode=mode)  # type: ignore[arg-type]
        with pytest.raises(ActorFailed):
            await poll(billing)
        await eventually(lambda: billing.poller.state != "running")
        await billing.clock.advance(BACKOFF_S)
        await eventually(lambda: billing.poller.state == "running")
    assert (await poll(billing)).granted == 1
