"""The Solana JSON-RPC and NOWPayments sandbox peers, spoken to over real loopback HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from aiohttp import web

from messages.payments import (
    PaymentStatus,
    decode_ipn,
    ipn_signature,
    verify_ipn_signature,
)
from messages.solana import b58encode, new_reference, verify_transfer
from sandbox.nowpayments import NowPaymentsStub
from sandbox.solana import DEFAULT_FEE, SolanaRpcStub

WALLET = "GsbwXfJraMomNxBcjYLcG3mxkBUiyWXAB32fGbSMQRdW"
PAYER = "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG"
PRICE = 250_000_000
TX_CONFIG = {
    "encoding": "jsonParsed",
    "commitment": "finalized",
    "maxSupportedTransactionVersion": 0,
}


@pytest.fixture
async def solana() -> AsyncIterator[SolanaRpcStub]:
    async with SolanaRpcStub() as stub:
        yield stub


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def rpc(http: httpx.AsyncClient, url: str, method: str, *params: Any) -> dict[str, Any]:
    response = await http.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 1
    return body


async def fetch(http: httpx.AsyncClient, stub: SolanaRpcStub, signature: str, **config: Any) -> Any:
    return (await rpc(http, stub.url, "getTransaction", signature, TX_CONFIG | config))["result"]


# -- Solana ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_poll_by_reference_then_verify(
    solana: SolanaRpcStub, http: httpx.AsyncClient
) -> None:
    reference = new_reference()
    signature = solana.add_transfer(
        source=PAYER, destination=WALLET, lamports=PRICE, reference=reference, memo="order 7"
    )
    solana.add_transfer(source=PAYER, destination=WALLET, lamports=1, reference=None)  # noise

    found = await rpc(
        http,
        solana.url,
        "getSignaturesForAddress",
        reference,
        {"limit": 10, "commitment": "finalized"},
    )
    [row] = found["result"]
    assert row["signature"] == signature
    assert row["confirmationStatus"] == "finalized" and row["err"] is None
    assert row["memo"] == "[7] order 7"
    assert isinstance(row["slot"], int) and isinstance(row["blockTime"], int)

    tx = await fetch(http, solana, signature)
    assert tx["version"] == 0
    keys = tx["transaction"]["message"]["accountKeys"]
    assert keys[0] == {"pubkey": PAYER, "signer": True, "source": "transaction", "writable": True}
    assert {
        "pubkey": reference,
        "signer": False,
        "source": "transaction",
        "writable": False,
    } in keys
    programs = [ix["program"] for ix in tx["transaction"]["message"]["instructions"]]
    assert programs == ["spl-memo", "system"]
    verdict = verify_transfer(
        tx,
        wallet=WALLET,
        expected_lamports=PRICE,
        reference=reference,
        confirmation_status=row["confirmationStatus"],
    )
    assert verdict.ok, verdict.reason
    assert verdict.signature == signature and verdict.block_time == row["blockTime"]
    payer_index = [k["pubkey"] for k in keys].index(PAYER)
    pre, post = tx["meta"]["preBalances"], tx["meta"]["postBalances"]
    assert pre[payer_index] - post[payer_index] == PRICE + DEFAULT_FEE
    assert solana.balance(WALLET) == PRICE + 1


@pytest.mark.anyio
async def test_versioned_transaction_needs_max_supported_version(
    solana: SolanaRpcStub, http: httpx.AsyncClient
) -> None:
    reference = new_reference()
    v0 = solana.add_transfer(source=PAYER, destination=WALLET, lamports=PRICE, reference=reference)
    legacy = solana.add_transfer(
        source=PAYER, destination=WALLET, lamports=PRICE, reference=reference, version="legacy"
    )
    config = {"encoding": "jsonParsed", "commitment": "finalized"}
    refused = await rpc(http, solana.url, "getTransaction", v0, config)
    assert refused["error"]["code"] == -32015
    assert "maxSupportedTransactionVersion" in refused["error"]["message"]
    plain_legacy = (await rpc(http, solana.url, "getTransaction", legacy, config))["result"]
    assert "version" not in plain_legacy
    assert (await fetch(http, solana, legacy))["version"] == "legacy"


@pytest.mark.anyio
async def test_finalized_commitment_hides_confirmed_only(
    solana: SolanaRpcStub, http: httpx.AsyncClient
) -> None:
    reference = new_reference()
    signature = solana.add_transfer(
        source=PAYER, destination=WALLET, lamports=PRICE, reference=reference, status="confirmed"
    )
    finalized = await rpc(
        http, solana.url, "getSignaturesForAddress", reference, {"commitment": "finalized"}
    )
    assert finalized["result"] == []
    assert await fetch(http, solana, signature) is None

    confirmed = await rpc(
        http, solana.url, "getSignaturesForAddress", reference, {"commitment": "confirmed"}
    )
    [row] = confirmed["result"]
    tx = await fetch(http, solana, signature, commitment="confirmed")
    verdict = verify_transfer(
        tx,
        wallet=WALLET,
        expected_lamports=PRICE,
        reference=reference,
        confirmation_status=row["confirmationStatus"],
    )
    assert not verdict.ok and "not finalized" in verdict.reason

    solana.finalize(signature)
    assert verify_transfer(
        await fetch(http, solana, signature),
        wallet=WALLET,
        expected_lamports=PRICE,
        reference=reference,
    ).ok


@pytest.mark.anyio
async def test_failed_and_fee_payer_transactions(
    solana: SolanaRpcStub, http: httpx.AsyncClient
) -> None:
    reference = new_reference()
    poor = b58encode(bytes(range(1, 33)))
    solana.fund(poor, PRICE)  # cannot also pay the fee
    failed = solana.add_transfer(
        source=poor, destination=WALLET, lamports=PRICE, reference=reference
    )
    tx = await fetch(http, solana, failed)
    assert tx["meta"]["err"] == {"InstructionError": [0, {"Custom": 1}]}
    assert tx["meta"]["status"] == {"Err": tx["meta"]["err"]}
    verdict = verify_transfer(tx, wallet=WALLET, expected_lamports=PRICE, reference=reference)
    assert not verdict.ok and "failed on chain" in verdict.reason
    assert solana.balance(poor) == PRICE - DEFAULT_FEE

    sponsored = solana.add_transfer(
        source=PAYER, destination=WALLET, lamports=PRICE, reference=reference, fee_payer=WALLET
    )
    verdict = verify_transfer(
        await fetch(http, solana, sponsored),
        wallet=WALLET,
        expected_lamports=PRICE,
        reference=reference,
    )
    assert verdict.ok and verdict.flags == ("wallet_is_fee_payer",)


@pytest.mark.anyio
async def test_pagination_errors_and_faults(solana: SolanaRpcStub, http: httpx.AsyncClient) -> None:
    reference = new_reference()
    sigs = [
        solana.add_transfer(source=PAYER, destination=WALLET, lamports=n, reference=reference)
        for n in (1, 2, 3)
    ]
    page = await rpc(
        http, solana.url, "getSignaturesForAddress", reference, {"limit": 1, "before": sigs[2]}
    )
    assert [r["signature"] for r in page["result"]] == [sigs[1]]
    page = await rpc(http, solana.url, "getSignaturesForAddress", reference, {"until": sigs[0]})
    assert [r["signature"] for r in page["result"]] == [sigs[2], sigs[1]]

    assert (await rpc(http, solana.url, "getBlockProduction"))["error"]["code"] == -32601
    assert (await rpc(http, solana.url, "getTransaction", "nope"))["error"]["code"] == -32602
    low = await rpc(
        http, solana.url, "getSignaturesForAddress", reference, {"commitment": "processed"}
    )
    assert low["error"]["code"] == -32602
    garbage = await http.post(solana.url, content=b"{not json")
    assert garbage.json()["error"]["code"] == -32700

    solana.fail_next(1)
    assert (
        await http.post(solana.url, json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"})
    ).status_code == 503
    solana.fail_next(1, mode="rpc")
    assert (await rpc(http, solana.url, "getHealth"))["error"]["code"] == -32005
    assert (await rpc(http, solana.url, "getHealth"))["result"] == "ok"

    port = solana.port
    await solana.stop()
    with pytest.raises(httpx.ConnectError):
        await rpc(http, solana.url, "getHealth")
    await solana.start(port=port)
    assert (await fetch(http, solana, sigs[0]))["transaction"]["signatures"] == [sigs[0]]


# -- NOWPayments ----------------------------------------------------------------------

SECRET = "ipn-secret-for-tests"
API_KEY = "test-api-key"


class Receiver:
    """A minimal IPN endpoint: verifies like the payments actor will, records what came."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str | None]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        sig = request.headers.get("x-nowpayments-sig")
        self.received.append((body, sig))
        if not verify_ipn_signature(body, sig, SECRET):
            return web.json_response({"error": "bad signature"}, status=401)
        decode_ipn(body)
        return web.json_response({"ok": True})

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/ipn", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/ipn"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
async def gateway() -> AsyncIterator[NowPaymentsStub]:
    async with NowPaymentsStub(api_key=API_KEY, ipn_secret=SECRET) as stub:
        yield stub


async def create_invoice(
    http: httpx.AsyncClient, gateway: NowPaymentsStub, callback: str, **overrides: Any
) -> httpx.Response:
    body = {
        "price_amount": 9.99,
        "price_currency": "usd",
        "order_id": "order-42",
        "order_description": "callwatch monthly",
        "ipn_callback_url": callback,
        "success_url": "https://t.me/callwatch_bot",
    } | overrides
    return await http.post(f"{gateway.url}/v1/invoice", json=body, headers={"x-api-key": API_KEY})


@pytest.mark.anyio
async def test_invoice_creation_and_auth(
    gateway: NowPaymentsStub, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    response = await create_invoice(http, gateway, receiver.url)
    assert response.status_code == 200
    invoice = response.json()
    assert invoice["order_id"] == "order-42" and invoice["price_amount"] == "9.99"
    assert invoice["invoice_url"].startswith(f"{gateway.url}/payment/?iid={invoice['id']}")
    page = await http.get(invoice["invoice_url"])
    assert page.status_code == 200 and "callwatch monthly" in page.text

    wrong_key = await http.post(f"{gateway.url}/v1/invoice", json={}, headers={"x-api-key": "x"})
    assert wrong_key.status_code == 403 and wrong_key.json()["code"] == "INVALID_API_KEY"
    bad = await create_invoice(http, gateway, receiver.url, price_amount=-1)
    assert bad.status_code == 400 and "price_amount" in bad.json()["message"]
    bad = await create_invoice(http, gateway, "ftp://nowhere")
    assert bad.status_code == 400


@pytest.mark.anyio
async def test_signed_ipn_is_delivered_and_verifies(
    gateway: NowPaymentsStub, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    invoice = (await create_invoice(http, gateway, receiver.url)).json()
    assert await gateway.send_ipn("order-42", "waiting") == 200
    assert await gateway.send_ipn(invoice["id"], PaymentStatus.FINISHED) == 200

    body, sig = receiver.received[-1]
    assert sig == ipn_signature(body, SECRET, "node")
    assert sig != ipn_signature(body, SECRET, "recursive")  # `fee` really is nested
    ipn = decode_ipn(body)
    assert ipn.payment_status is PaymentStatus.FINISHED
    assert ipn.order_id == "order-42" and ipn.invoice_id == invoice["id"]
    assert str(ipn.price_amount) == "9.99" and ipn.price_currency == "usd"
    assert ipn.actually_paid == ipn.pay_amount
    assert set(ipn.raw["fee"]) == {"currency", "depositFee", "withdrawalFee", "serviceFee"}
    assert b" " not in body.split(b'"order_description"')[0]  # compact, like JSON.stringify

    status = await http.get(
        f"{gateway.url}/v1/payment/{ipn.payment_id}", headers={"x-api-key": API_KEY}
    )
    assert status.status_code == 200 and status.json()["payment_status"] == "finished"
    missing = await http.get(f"{gateway.url}/v1/payment/1", headers={"x-api-key": API_KEY})
    assert missing.status_code == 404


@pytest.mark.anyio
async def test_forged_unsigned_and_unconfigured_callbacks(
    gateway: NowPaymentsStub, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    await create_invoice(http, gateway, receiver.url)
    assert await gateway.send_ipn("order-42", "finished", forge=True) == 401
    assert await gateway.send_ipn("order-42", "finished", sign=False) == 401
    assert receiver.received[-1][1] is None
    assert await gateway.send_ipn("order-42", "partially_paid", extra={"price_amount": 0.01}) == 200
    assert decode_ipn(receiver.received[-1][0]).price_amount == Decimal("0.01")

    gateway.ipn_secret = None
    count = len(receiver.received)
    assert await gateway.send_ipn("order-42", "finished") == 0
    assert len(receiver.received) == count
    assert gateway.deliveries[-1].error == "no IPN secret set"
    with pytest.raises(KeyError):
        await gateway.send_ipn("no-such-order", "finished")
