"""NOWPayments invoices and IPN callbacks through the real listener, from the sandbox gateway."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import httpx
import pytest
from structlog.testing import capture_logs

from actors.payments import GATEWAY_DOWN
from messages.billing import (
    CreateOrder,
    OrderCreated,
    Reconcile,
    Refused,
    SubscriptionInfo,
    SubscriptionStatus,
)
from messages.payments import Plan, ipn_signature, js_json
from tests.payments.conftest import SECRET, USER, Billing, BillingFactory

pytestmark = pytest.mark.anyio


async def invoice_for(billing: Billing, plan: Plan = Plan.MONTHLY) -> OrderCreated:
    created = await billing.ask(CreateOrder(user_id=USER, plan=plan, method="nowpayments"))
    assert isinstance(created, OrderCreated), created
    return created


async def ipn(billing: Billing, order: OrderCreated, status: str, **kw: object) -> int:
    code = await billing.gateway.send_ipn(order.order_id, status, **kw)  # type: ignore[arg-type]
    await billing.settled()
    return code


async def grants(billing: Billing, live: bool = False) -> int:
    sql = "SELECT count(*) FROM subscriptions"
    return await billing.count(sql + (" WHERE revoked_at IS NULL" if live else ""))


async def status(billing: Billing) -> SubscriptionInfo:
    info = await billing.ask(SubscriptionStatus(user_id=USER))
    assert isinstance(info, SubscriptionInfo)
    return info


async def payment_status(billing: Billing) -> list[str]:
    rows = await billing.pool.fetch("SELECT status FROM payments ORDER BY id")
    return [r["status"] for r in rows]


async def test_invoice_is_created_for_the_order(billing: Billing) -> None:
    order = await invoice_for(billing)
    invoice = billing.gateway.find_invoice(order.order_id)
    assert order.pay_url == f"{billing.gateway.url}/payment/?iid={invoice.id}"
    assert invoice.price_amount == 225 and invoice.price_currency == "usd"
    assert order.amount_usd == Decimal("225")
    assert invoice.ipn_callback_url is None  # none configured: the dashboard's default applies
    row = await billing.pool.fetchrow(
        "SELECT method, status, amount_usd, reference_key FROM orders WHERE id = $1",
        UUID(order.order_id),
    )
    assert dict(row) == {
        "method": "nowpayments",
        "status": "pending",
        "amount_usd": Decimal("225.00"),
        "reference_key": order.order_id,
    }


async def test_configured_callback_url_is_sent_with_the_invoice(
    make_billing: BillingFactory,
) -> None:
    billing = await make_billing(ipn_callback_url="https://bot.example/nowpayments/ipn")
    order = await invoice_for(billing)
    invoice = billing.gateway.find_invoice(order.order_id)
    assert invoice.ipn_callback_url == "https://bot.example/nowpayments/ipn"


async def test_gateway_down_refuses_the_order_and_closes_it(billing: Billing) -> None:
    await billing.gateway.stop()
    reply = await billing.ask(CreateOrder(user_id=USER, plan=Plan.DAILY, method="nowpayments"))
    assert reply == Refused(GATEWAY_DOWN)
    assert await billing.pool.fetchval("SELECT status FROM orders") == "failed"


async def test_finished_grants_once_even_when_repeated(billing: Billing) -> None:
    order = await invoice_for(billing)
    assert await ipn(billing, order, "waiting") == 200
    assert await ipn(billing, order, "confirming") == 200
    assert await grants(billing) == 0
    assert await ipn(billing, order, "finished") == 200
    assert await ipn(billing, order, "finished") == 200
    assert await ipn(billing, order, "finished") == 200

    assert await grants(billing) == 1
    assert await payment_status(billing) == ["confirmed"]
    info = await status(billing)
    assert info.active and info.plan == "monthly"
    assert info.expires_at == billing.now() + timedelta(days=30)
    assert len(billing.texts("payment")) == 1 and "Payment received" in billing.texts()[0]
    assert len(billing.changes) == 1
    order_row = await billing.pool.fetchrow("SELECT status, paid_at FROM orders")
    assert order_row["status"] == "paid" and order_row["paid_at"] is not None


async def test_refunded_revokes_and_a_late_finished_does_not_grant_again(billing: Billing) -> None:
    order = await invoice_for(billing)
    await ipn(billing, order, "finished")
    assert (await status(billing)).active

    assert await ipn(billing, order, "refunded") == 200
    info = await status(billing)
    assert not info.active
    assert await grants(billing, live=True) == 0
    assert await payment_status(billing) == ["refunded"]
    assert len(billing.changes) == 2
    assert any("refunded" in text for text in billing.texts("payment"))

    for late in ("finished", "partially_paid", "confirmed", "refunded"):
        await ipn(billing, order, late)
    assert await grants(billing, live=True) == 0 and await grants(billing) == 1
    assert await payment_status(billing) == ["refunded"]
    report = await billing.ask(
        Reconcile(
            since=billing.now() - timedelta(hours=1), until=billing.now() + timedelta(hours=1)
        )
    )
    assert report.mismatches == ()
    assert [r.payment_status for r in report.rows] == ["refunded"]


async def test_out_of_order_callbacks_are_idempotent(billing: Billing) -> None:
    refunded_first = await invoice_for(billing, Plan.DAILY)
    await ipn(billing, refunded_first, "refunded")
    await ipn(billing, refunded_first, "finished")
    assert await grants(billing) == 0

    partial_then_paid = await invoice_for(billing, Plan.WEEKLY)
    await ipn(billing, partial_then_paid, "partially_paid")
    partial = [text for text in billing.texts("payment") if "part of your payment" in text]
    assert len(partial) == 1 and "(0.25 of 0.5 SOL)" in partial[0]
    await ipn(billing, partial_then_paid, "finished")
    await ipn(billing, partial_then_paid, "partially_paid")  # stale, arrives late
    await ipn(billing, partial_then_paid, "waiting")
    assert await grants(billing) == 1
    info = await status(billing)
    assert info.active and info.plan == "weekly"
    rows = await billing.pool.fetch("SELECT status FROM payments ORDER BY id")
    assert [r["status"] for r in rows] == ["refunded", "confirmed"]


@pytest.mark.parametrize("outcome", ["failed", "expired"])
async def test_failed_and_expired_close_the_order(billing: Billing, outcome: str) -> None:
    order = await invoice_for(billing)
    await ipn(billing, order, outcome)
    assert await billing.pool.fetchval("SELECT status FROM orders") == outcome
    assert await grants(billing) == 0
    assert any(outcome in text for text in billing.texts("payment"))
    await ipn(billing, order, outcome)
    assert len(billing.texts("payment")) == 1


async def test_finished_for_the_wrong_amount_or_currency_grants_nothing(billing: Billing) -> None:
    order = await invoice_for(billing)
    await ipn(billing, order, "finished", extra={"price_amount": 1})
    assert await grants(billing) == 0
    other = await invoice_for(billing, Plan.WEEKLY)
    await ipn(billing, other, "finished", extra={"price_currency": "eur"})
    assert await grants(billing) == 0
    assert await payment_status(billing) == ["failed", "failed"]
    report = await billing.ask(
        Reconcile(
            since=billing.now() - timedelta(hours=1), until=billing.now() + timedelta(hours=1)
        )
    )
    assert sorted(m.kind for m in report.mismatches) == ["received_not_granted"] * 2


async def test_forged_or_missing_signature_is_refused_and_logged(billing: Billing) -> None:
    order = await invoice_for(billing)
    with capture_logs() as logs:
        assert await ipn(billing, order, "finished", forge=True) == 401
        assert await ipn(billing, order, "finished", sign=False) == 401
    refused = [e for e in logs if e["event"] == "ipn.refused"]
    assert [e["reason"] for e in refused] == ["bad signature", "missing signature"]
    assert all(SECRET not in json.dumps(e, default=str) for e in logs)
    assert await grants(billing) == 0 and await payment_status(billing) == []


async def test_recursively_sorted_signature_is_accepted(billing: Billing) -> None:
    order = await invoice_for(billing)
    body = js_json(
        {
            "payment_id": 991,
            "payment_status": "finished",
            "order_id": order.order_id,
            "price_amount": 225,
            "price_currency": "usd",
            "fee": {"withdrawalFee": 0, "currency": "sol", "depositFee": 1e-7},
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-nowpayments-sig": ipn_signature(body, SECRET, "recursive"),
    }
    async with httpx.AsyncClient() as http:
        response = await http.post(billing.ipn_url, content=body, headers=headers)
    assert response.status_code == 200
    await billing.settled()
    assert await grants(billing) == 1


async def test_client_mistakes_get_4xx(billing: Billing) -> None:
    order = await invoice_for(billing)
    good = js_json(
        {
            "payment_id": 5,
            "payment_status": "finished",
            "order_id": order.order_id,
            "price_amount": 225,
            "price_currency": "usd",
        }
    ).encode()
    sig = ipn_signature(good, SECRET)
    json_type = {"content-type": "application/json"}
    not_an_ipn = b'{"hello": "world"}'
    async with httpx.AsyncClient() as http:
        url = billing.ipn_url
        cases = {
            "too large": (b"{" + b" " * 70_000 + b"}", json_type | {"x-nowpayments-sig": sig}),
            "form": (good, {"content-type": "text/plain", "x-nowpayments-sig": sig}),
            "not an ipn": (
                not_an_ipn,
                json_type | {"x-nowpayments-sig": ipn_signature(not_an_ipn, SECRET)},
            ),
            "empty sig": (good, json_type | {"x-nowpayments-sig": ""}),
        }
        codes = {}
        for name, (body, headers) in cases.items():
            codes[name] = (await http.post(url, content=body, headers=headers)).status_code
        codes["get"] = (await http.get(url)).status_code
    assert codes == {"too large": 413, "form": 415, "not an ipn": 400, "empty sig": 401, "get": 405}
    await billing.settled()
    assert await grants(billing) == 0


async def test_ipn_listener_is_answered_503_while_postgres_is_down(billing: Billing) -> None:
    order = await invoice_for(billing)
    pool = billing.store.pool()
    billing.store.publish_pool(None)
    try:
        assert await billing.gateway.send_ipn(order.order_id, "finished") == 503
    finally:
        billing.store.publish_pool(pool)
    assert await ipn(billing, order, "finished") == 200  # the gateway's retry
    assert await grants(billing) == 1
