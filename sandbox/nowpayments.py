"""A NOWPayments stand-in: invoice creation, payment lookup, and IPN callbacks on demand.

IPNs are built and signed the way the real service does it: the body is what Node's
`JSON.stringify` writes (so numbers look like JavaScript numbers), it carries a nested `fee`
object, and `x-nowpayments-sig` is the HMAC-SHA512 of
`JSON.stringify(params, Object.keys(params).sort())` with the IPN secret. Like the real
service, no callback is sent while no IPN secret is set.
"""

from __future__ import annotations

import html
import itertools
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from messages.payments import PaymentStatus, ipn_signature, js_json, js_number
from messages.solana import b58encode
from sandbox._loopback import LoopbackHttpServer

__all__ = ["DEFAULT_RATES", "Invoice", "IpnDelivery", "NowPaymentsStub"]

log = structlog.get_logger(__name__)

DEFAULT_RATES: Final = {"sol": 150.0, "btc": 60_000.0, "eth": 3_000.0, "usdttrc20": 1.0}
"""Price of one unit of the pay currency in the invoice currency (treated as USD)."""
_PAID_IN_FULL: Final = frozenset({"confirming", "confirmed", "sending", "finished", "refunded"})
_DEPOSIT_FEE: Final = 0.005


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Invoice:
    """One invoice and, once someone "pays", its payment."""

    id: int
    order_id: str | None
    order_description: str | None
    price_amount: int | float
    price_currency: str
    pay_currency: str
    ipn_callback_url: str | None
    success_url: str | None
    cancel_url: str | None
    created_at: str
    payment_id: int | None = None
    payment_status: str = "waiting"
    pay_address: str | None = None
    pay_amount: float = 0.0
    actually_paid: float = 0.0
    updated_at: str = ""
    purchase_id: str = field(default_factory=lambda: str(secrets.randbelow(9 * 10**9) + 10**9))


@dataclass(frozen=True)
class IpnDelivery:
    """One attempted callback, for tests and the demo log (the signature, never the secret)."""

    url: str
    status: str
    body: bytes
    signature: str | None
    http_status: int
    error: str | None = None


class NowPaymentsStub(LoopbackHttpServer):
    """`POST /v1/invoice`, `GET /v1/payment/{id}`, `GET /v1/status`, an invoice page, and
    `send_ipn` to play the gateway's side of a payment."""

    def __init__(
        self,
        *,
        api_key: str = "sandbox-api-key",
        ipn_secret: str | None = None,
        default_ipn_callback_url: str | None = None,
        pay_currency: str = "sol",
        rates: dict[str, float] | None = None,
        callback_timeout: float = 3.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.ipn_secret = ipn_secret
        self.default_ipn_callback_url = default_ipn_callback_url
        self.pay_currency = pay_currency
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.callback_timeout = callback_timeout
        self.invoices: dict[int, Invoice] = {}
        self.deliveries: list[IpnDelivery] = []
        self._invoice_ids = itertools.count(4_522_625_843, 7)
        self._payment_ids = itertools.count(5_077_125_051, 13)

    # -- HTTP -----------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post("/v1/invoice", self._create_invoice)
        app.router.add_get("/v1/payment/{payment_id}", self._get_payment)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/payment/", self._invoice_page)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return secrets.compare_digest(
            request.headers.get("x-api-key", "").encode(), self.api_key.encode()
        )

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "OK"})

    async def _create_invoice(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _api_error(403, "INVALID_API_KEY", "Invalid api key")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _api_error(400, "INVALID_REQUEST_PARAMS", "body is not JSON")
        if not isinstance(body, dict):
            return _api_error(400, "INVALID_REQUEST_PARAMS", "body must be an object")
        price = body.get("price_amount")
        if isinstance(price, str):
            try:
                price = float(price)
            except ValueError:
                price = None
        if isinstance(price, bool) or not isinstance(price, int | float) or not price > 0:
            return _api_error(400, "INVALID_REQUEST_PARAMS", '"price_amount" must be a number > 0')
        currency = body.get("price_currency")
        if not isinstance(currency, str) or not currency:
            return _api_error(400, "INVALID_REQUEST_PARAMS", '"price_currency" is required')
        text_fields: dict[str, str | None] = {}
        for name in (
            "order_id",
            "order_description",
            "ipn_callback_url",
            "success_url",
            "cancel_url",
            "pay_currency",
        ):
            value = body.get(name)
            if value is not None and not isinstance(value, str):
                return _api_error(400, "INVALID_REQUEST_PARAMS", f'"{name}" must be a string')
            text_fields[name] = value
        callback = text_fields["ipn_callback_url"]
        if callback is not None and not callback.startswith(("http://", "https://")):
            return _api_error(400, "INVALID_REQUEST_PARAMS", '"ipn_callback_url" must be a URI')
        invoice = Invoice(
            id=next(self._invoice_ids),
            order_id=text_fields["order_id"],
            order_description=text_fields["order_description"],
            price_amount=price,
            price_currency=currency.lower(),
            pay_currency=(text_fields["pay_currency"] or self.pay_currency).lower(),
            ipn_callback_url=callback,
            success_url=text_fields["success_url"],
            cancel_url=text_fields["cancel_url"],
            created_at=_now(),
        )
        invoice.updated_at = invoice.created_at
        self.invoices[invoice.id] = invoice
        log.info("nowpayments_stub.invoice", invoice_id=invoice.id, order_id=invoice.order_id)
        return web.json_response(
            {
                "id": str(invoice.id),
                "token_id": secrets.token_hex(5),
                "order_id": invoice.order_id,
                "order_description": invoice.order_description,
                "price_amount": js_number(invoice.price_amount),
                "price_currency": invoice.price_currency,
                "pay_currency": text_fields["pay_currency"],
                "ipn_callback_url": invoice.ipn_callback_url,
                "invoice_url": f"{self.url}/payment/?iid={invoice.id}",
                "success_url": invoice.success_url,
                "cancel_url": invoice.cancel_url,
                "partially_paid_url": None,
                "payout_currency": None,
                "created_at": invoice.created_at,
                "updated_at": invoice.updated_at,
                "is_fixed_rate": False,
                "is_fee_paid_by_user": False,
            }
        )

    async def _get_payment(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _api_error(403, "INVALID_API_KEY", "Invalid api key")
        wanted = request.match_info["payment_id"]
        for invoice in self.invoices.values():
            if invoice.payment_id is not None and str(invoice.payment_id) == wanted:
                body = self._payment_fields(invoice)
                return web.Response(text=js_json(body), content_type="application/json")
        return _api_error(404, "NOT_FOUND", "Payment not found")

    async def _invoice_page(self, request: web.Request) -> web.Response:
        invoice = self.invoices.get(_int_or_none(request.query.get("iid")) or -1)
        if invoice is None:
            return web.Response(status=404, text="invoice not found")
        lines = [
            f"Sandbox invoice {invoice.id}",
            f"{js_number(invoice.price_amount)} {invoice.price_currency.upper()}",
            f"order {invoice.order_id or '-'}: {invoice.order_description or ''}",
            f"status: {invoice.payment_status}",
        ]
        page = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
        return web.Response(
            text=f"<!doctype html><title>Invoice</title>{page}", content_type="text/html"
        )

    # -- the gateway's side of a payment ----------------------------------------------

    def find_invoice(self, invoice_or_order_id: str | int) -> Invoice:
        """By invoice id, else the newest invoice with that order id (KeyError if none)."""
        as_int = _int_or_none(invoice_or_order_id)
        if as_int is not None and as_int in self.invoices:
            return self.invoices[as_int]
        for invoice in reversed(self.invoices.values()):
            if invoice.order_id == str(invoice_or_order_id):
                return invoice
        raise KeyError(f"no invoice or order {invoice_or_order_id!r}")

    def _payment_fields(self, invoice: Invoice) -> dict[str, Any]:
        rate = self.rates.get(invoice.pay_currency, 1.0)
        paid = invoice.actually_paid
        return {
            "payment_id": invoice.payment_id,
            "parent_payment_id": None,
            "invoice_id": invoice.id,
            "payment_status": invoice.payment_status,
            "pay_address": invoice.pay_address,
            "payin_extra_id": None,
            "price_amount": invoice.price_amount,
            "price_currency": invoice.price_currency,
            "pay_amount": invoice.pay_amount,
            "actually_paid": paid,
            "actually_paid_at_fiat": round(paid * rate, 2),
            "pay_currency": invoice.pay_currency,
            "order_id": invoice.order_id,
            "order_description": invoice.order_description,
            "purchase_id": invoice.purchase_id,
            "outcome_amount": round(paid * (1 - _DEPOSIT_FEE), 8),
            "outcome_currency": invoice.pay_currency,
            "payment_extra_ids": None,
            "created_at": invoice.created_at,
            "updated_at": invoice.updated_at,
        }

    async def send_ipn(
        self,
        invoice_or_order_id: str | int,
        status: PaymentStatus | str,
        *,
        actually_paid: float | None = None,
        extra: dict[str, Any] | None = None,
        sign: bool = True,
        forge: bool = False,
    ) -> int:
        """Move the invoice's payment to `status` and POST the IPN to its callback URL.

        Returns the receiver's HTTP status, or 0 when nothing was delivered (no IPN secret
        set, no callback URL, or the receiver did not answer within `callback_timeout`).
        `extra` overrides or adds body fields; `sign=False` omits the signature header and
        `forge=True` signs with the wrong secret. Every attempt lands in `deliveries`.
        """
        invoice = self.find_invoice(invoice_or_order_id)
        status = PaymentStatus(status).value
        if invoice.payment_id is None:
            invoice.payment_id = next(self._payment_ids)
            invoice.pay_address = b58encode(secrets.token_bytes(32))
            rate = self.rates.get(invoice.pay_currency, 1.0)
            invoice.pay_amount = round(float(invoice.price_amount) / rate, 8)
        if actually_paid is None:
            if status in _PAID_IN_FULL:
                actually_paid = invoice.pay_amount
            elif status == "partially_paid":
                actually_paid = round(invoice.pay_amount / 2, 8)
            else:
                actually_paid = invoice.actually_paid
        invoice.payment_status = status
        invoice.actually_paid = actually_paid
        invoice.updated_at = _now()

        url = invoice.ipn_callback_url or self.default_ipn_callback_url
        if not self.ipn_secret or not url:
            why = "no IPN secret set" if not self.ipn_secret else "no callback URL"
            log.info("nowpayments_stub.ipn_skipped", invoice_id=invoice.id, reason=why)
            self.deliveries.append(IpnDelivery(url or "", status, b"", None, 0, why))
            return 0

        fields = self._payment_fields(invoice)
        fields["fee"] = {
            "currency": invoice.pay_currency,
            "depositFee": round(actually_paid * _DEPOSIT_FEE, 8),
            "withdrawalFee": 0,
            "serviceFee": 0,
        }
        fields.update(extra or {})
        body = js_json(fields).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        signature: str | None = None
        if sign:
            secret = self.ipn_secret + "-forged" if forge else self.ipn_secret
            signature = ipn_signature(body, secret, "node")
            headers["x-nowpayments-sig"] = signature

        http_status, error = 0, None
        timeout = aiohttp.ClientTimeout(total=self.callback_timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=body, headers=headers) as response,
            ):
                http_status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        self.deliveries.append(IpnDelivery(url, status, body, signature, http_status, error))
        log.info(
            "nowpayments_stub.ipn",
            invoice_id=invoice.id,
            status=status,
            http_status=http_status,
            error=error,
        )
        return http_status


def _api_error(status: int, code: str, message: str) -> web.Response:
    body = {"status": False, "statusCode": status, "code": code, "message": message}
    return web.json_response(body, status=status)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) < 20:
        return int(value)
    return None
