"""Property: whatever is POSTed to the IPN listener, it never answers 5xx and never grants.

Bodies are random bytes, random JSON objects built from IPN field names and values, and
byte-level mutations of real IPNs; headers carry no signature, a random one, the original
body's signature, or a valid signature over the (mutated) body itself. The only requests
excluded are the ones that legitimately pay: a correctly signed `finished` for the real
order at the real price.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from messages.billing import CreateOrder, OrderCreated
from messages.payments import (
    IpnError,
    PaymentStatus,
    decode_ipn,
    ipn_signature,
    js_json,
    verify_ipn_signature,
)
from tests.payments.conftest import SECRET, USER, Billing, BillingFactory

pytestmark = pytest.mark.anyio

ORDER_MARK = "__ORDER__"


@dataclass
class Target:
    billing: Billing
    order: OrderCreated
    http: httpx.AsyncClient
    bases: list[bytes]


@pytest.fixture
async def target(make_billing: BillingFactory) -> AsyncIterator[Target]:
    billing = await make_billing()
    order = await billing.ask(CreateOrder(user_id=USER, plan="monthly", method="nowpayments"))
    assert isinstance(order, OrderCreated)

    def ipn(**fields: Any) -> bytes:
        body = {
            "payment_id": 5077125051,
            "invoice_id": 4522625843,
            "payment_status": "finished",
            "pay_address": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin",
            "price_amount": 225,
            "price_currency": "usd",
            "pay_amount": 1.5,
            "actually_paid": 1.5,
            "pay_currency": "sol",
            "order_id": order.order_id,
            "order_description": "callwatch monthly plan",
            "outcome_amount": 1.4925,
            "outcome_currency": "sol",
            "fee": {"currency": "sol", "depositFee": 0.0075, "withdrawalFee": 0, "serviceFee": 0},
        }
        return js_json(body | fields).encode()

    bases = [
        ipn(),  # the real thing: only ever sent mutated or with a wrong signature
        ipn(price_amount=224.99),
        ipn(order_id="6f1c1c8e-0000-4000-8000-000000000000"),
        ipn(payment_status="refunded"),
        ipn(payment_status="partially_paid", actually_paid=0.75),
    ]
    async with httpx.AsyncClient(timeout=5) as http:
        yield Target(billing, order, http, bases)


ipn_keys = st.sampled_from(
    [
        "payment_id",
        "payment_status",
        "order_id",
        "price_amount",
        "price_currency",
        "pay_amount",
        "actually_paid",
        "pay_currency",
        "invoice_id",
        "fee",
        "updated_at",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from([s.value for s in PaymentStatus] + ["usd", "USD", "225", 225, ORDER_MARK]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, int | None, str, str, str]:
    """(body kind, base index, mutation recipe as JSON, signature kind, content type)."""
    kind = draw(st.sampled_from(["random", "json", "mutated", "base"]))
    base = draw(st.integers(min_value=0, max_value=4)) if kind in ("mutated", "base") else None
    if kind == "random":
        recipe: Any = draw(st.binary(max_size=512)).hex()
    elif kind == "json":
        recipe = draw(st.dictionaries(ipn_keys, json_values, max_size=8))
    else:
        recipe = draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["flip", "insert", "delete", "truncate"]),
                    st.integers(min_value=0, max_value=2000),
                    st.integers(min_value=0, max_value=255),
                ),
                min_size=1 if kind == "mutated" else 0,
                max_size=4 if kind == "mutated" else 0,
            )
        )
    sig = draw(
        st.sampled_from(
            ["none", "empty", "random", "base", "valid", "valid", "valid", "valid_upper"]
        )
    )
    content_type = draw(
        st.sampled_from(
            ["application/json"] * 6 + ["application/json; charset=utf-8", "text/plain", "", "a/b"]
        )
    )
    return kind, base, json.dumps(recipe), sig, content_type


def build(target: Target, kind: str, base: int | None, recipe_json: str) -> bytes:
    recipe = json.loads(recipe_json)
    if kind == "random":
        return bytes.fromhex(recipe)
    if kind == "json":
        text = json.dumps(recipe).replace(f'"{ORDER_MARK}"', json.dumps(target.order.order_id))
        return text.encode()
    assert base is not None
    body = bytearray(target.bases[base])
    for op, at, byte in recipe:
        at = at % (len(body) + 1)
        if op == "flip" and at < len(body):
            body[at] ^= byte or 1
        elif op == "insert":
            body[at:at] = bytes([byte])
        elif op == "delete":
            del body[at : at + 1]
        elif op == "truncate":
            del body[at:]
    return bytes(body)


def would_pay(target: Target, body: bytes, signature: str | None) -> bool:
    if not verify_ipn_signature(body, signature, SECRET):
        return False
    try:
        payload = decode_ipn(body)
    except IpnError:
        return False
    return (
        payload.order_id == target.order.order_id
        and payload.payment_status is PaymentStatus.FINISHED
        and payload.price_currency == "usd"
        and payload.price_amount == 225
    )


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=requests())
async def test_any_request_is_never_a_5xx_and_never_grants(
    target: Target, case: tuple[str, int | None, str, str, str]
) -> None:
    kind, base, recipe, sig_kind, content_type = case
    body = build(target, kind, base, recipe)
    signature: str | None
    if sig_kind == "none":
        signature = None
    elif sig_kind == "empty":
        signature = ""
    elif sig_kind == "random":
        signature = "ab" * 64
    elif sig_kind == "base" and base is not None:
        signature = ipn_signature(target.bases[base], SECRET)
    else:
        try:
            signature = ipn_signature(body, SECRET)
        except IpnError:
            signature = "0" * 128
        if sig_kind == "valid_upper":
            signature = signature.upper()
    assume(not would_pay(target, body, signature))

    headers = {"content-type": content_type} if content_type else {}
    if signature is not None:
        headers["x-nowpayments-sig"] = signature
    response = await target.http.post(target.billing.ipn_url, content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert response.status_code in (200, 400, 401, 413, 415)
    event(f"HTTP {response.status_code}")
    if response.status_code == 200:
        assert verify_ipn_signature(body, signature, SECRET)

    billing = target.billing
    await billing.settled()
    assert await billing.count("SELECT count(*) FROM subscriptions") == 0
    assert await billing.count("SELECT count(*) FROM orders WHERE status = 'paid'") == 0
    payments = billing.tree.status().find("root/billing/payments")
    assert payments is not None and payments.restarts_total == 0
