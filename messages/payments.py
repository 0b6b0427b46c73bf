"""Subscription plans and the NOWPayments IPN: decoding and signature checking.

An IPN is an unauthenticated HTTP POST until its `x-nowpayments-sig` checks out, so the
decoder and the verifier take arbitrary bytes and never raise anything but `IpnError`
(the verifier never raises at all).

The signature is an HMAC-SHA512 over a re-serialisation of the body, not over the body
itself. NOWPayments computes it in Node as `JSON.stringify(params, Object.keys(params).sort())`:
that key list is a whitelist applied at every depth, so a nested object such as `fee` keeps
only the keys that are also top-level keys (usually none). Some integrators sort keys
recursively instead. We accept either form, and re-serialise the way JavaScript does: no
spaces, non-ASCII and "/" left alone, and number literals exactly as they arrived (Python
would turn `1e-7` into `1e-07` and `1.50` into `1.5`, breaking the HMAC).

Consequence worth knowing: under the Node form, content inside nested objects whose keys are
not top-level keys (the `fee` breakdown) is not covered by the signature. Decide nothing
from it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "IPN_SIGNATURE_FORMS",
    "IPN_STATUSES",
    "MAX_IPN_BODY",
    "IpnError",
    "IpnPayload",
    "IpnSignatureForm",
    "PaymentStatus",
    "Plan",
    "decode_ipn",
    "ipn_signature",
    "js_json",
    "js_number",
    "verify_ipn_signature",
]


class Plan(StrEnum):
    """What a subscription buys. Prices live in settings, so they can change without a deploy."""

    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    LIFETIME = "lifetime"

    @property
    def duration(self) -> timedelta | None:
        """Time one purchase adds; `None` for lifetime, which never expires."""
        return _PLAN_DURATIONS[self]

    @classmethod
    def parse(cls, text: str) -> Plan:
        """A plan from user text ("Monthly", " weekly "); `ValueError` naming the choices."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown plan {text[:40]!r}; choose one of {choices}") from None


_PLAN_DURATIONS: Final[dict[Plan, timedelta | None]] = {
    Plan.DAILY: timedelta(days=1),
    Plan.WEEKLY: timedelta(days=7),
    Plan.MONTHLY: timedelta(days=30),
    Plan.LIFETIME: None,
}


class PaymentStatus(StrEnum):
    """NOWPayments `payment_status` values."""

    WAITING = "waiting"
    CONFIRMING = "confirming"
    CONFIRMED = "confirmed"
    SENDING = "sending"
    PARTIALLY_PAID = "partially_paid"
    FINISHED = "finished"
    FAILED = "failed"
    REFUNDED = "refunded"
    EXPIRED = "expired"


IPN_STATUSES: Final = frozenset(s.value for s in PaymentStatus)
MAX_IPN_BODY: Final = 64 * 1024
"""Real IPNs are about 1 KiB; a bigger body is refused before parsing."""
_MAX_DEPTH: Final = 32

IpnSignatureForm = Literal["node", "recursive"]
"""How the signed string is built: "node" = `JSON.stringify(params, Object.keys(params).sort())`
(what NOWPayments does), "recursive" = every object's keys sorted, nothing dropped."""
IPN_SIGNATURE_FORMS: Final[tuple[IpnSignatureForm, ...]] = ("node", "recursive")


class IpnError(ValueError):
    """An IPN body we refuse; `reason` is short and safe to log (never contains the secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Literal:
    """A JSON number kept as the exact text it arrived as."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load(body: object, *, literal: bool) -> Any:
    if not isinstance(body, bytes | bytearray | memoryview):
        raise IpnError("body is not bytes")
    raw = bytes(body)
    if len(raw) > MAX_IPN_BODY:
        raise IpnError(f"body is larger than {MAX_IPN_BODY} bytes")
    try:
        text = raw.decode("utf-8")
        if literal:
            return json.loads(
                text, parse_int=_Literal, parse_float=_Literal, parse_constant=_reject_constant
            )
        return json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise IpnError(f"body is not JSON ({type(exc).__name__})") from None


_ESCAPE_RE: Final = re.compile('[\\x00-\\x1f"\\\\\ud800-\udfff]')
_SHORT_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    return _SHORT_ESCAPES.get(ch) or f"\\u{ord(ch):04x}"


def _js_string(text: str) -> str:
    """`JSON.stringify` of a string: only quotes, backslashes, controls and lone surrogates."""
    return '"' + _ESCAPE_RE.sub(_escape, text) + '"'


def js_number(value: int | float | Decimal) -> str:
    """A number as JavaScript's `Number.prototype.toString` (and so `JSON.stringify`) writes it."""
    try:
        number = float(value)
    except OverflowError:
        return "null"
    if not math.isfinite(number):
        return "null"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    _, digit_tuple, exp = Decimal(repr(abs(number))).as_tuple()
    if not isinstance(exp, int):
        return "null"
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent = exp + len(digit_tuple) - len(digits)
    k = len(digits)
    n = exponent + k
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if e >= 0 else '-'}{abs(e)}"


def _utf16_key(key: str) -> bytes:
    """JavaScript sorts strings by UTF-16 code units, not code points."""
    return key.encode("utf-16-be", "surrogatepass")


def _emit(value: Any, out: list[str], whitelist: Sequence[str] | None, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise IpnError("body is nested too deeply")
    if isinstance(value, dict):
        keys = [k for k in whitelist if k in value] if whitelist is not None else sorted(value)
        out.append("{")
        for i, key in enumerate(keys):
            if not isinstance(key, str):
                raise IpnError("object keys must be strings")
            if i:
                out.append(",")
            out.append(_js_string(key))
            out.append(":")
            _emit(value[key], out, whitelist, depth + 1)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out, whitelist, depth + 1)
        out.append("]")
    elif isinstance(value, str):
        out.append(_js_string(value))
    elif isinstance(value, _Literal):
        out.append(value.text)
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int | float | Decimal):
        out.append(
            str(value) if isinstance(value, int) and abs(value) < 2**53 else js_number(value)
        )
    else:
        raise IpnError(f"cannot serialise {type(value).__name__}")


def js_json(value: Any) -> str:
    """`JSON.stringify(value)`: keys in insertion order, numbers as JavaScript writes them.

    The sandbox builds IPN bodies with this, so they look like what a Node server sends.
    """
    out: list[str] = []
    _emit(value, out, None, 0)
    return "".join(out)


def _canonical(tree: Any, form: IpnSignatureForm) -> str:
    if not isinstance(tree, dict):
        raise IpnError("body is not a JSON object")
    out: list[str] = []
    if form == "node":
        _emit(tree, out, sorted(tree, key=_utf16_key), 0)
    elif form == "recursive":
        _emit(tree, out, None, 0)
    else:
        raise IpnError(f"unknown signature form {form!r}")
    return "".join(out)


def _hmac_hex(canonical: str, secret: str) -> str:
    key = secret.encode("utf-8")
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha512).hexdigest()


def ipn_signature(body: bytes, secret: str, form: IpnSignatureForm = "node") -> str:
    """The `x-nowpayments-sig` value for `body` in the given form (lowercase hex).

    Raises `IpnError` for a body that is not a JSON object or an empty secret.
    """
    if not secret:
        raise IpnError("no IPN secret")
    return _hmac_hex(_canonical(_load(body, literal=True), form), secret)


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def verify_ipn_signature(body: bytes, header_sig: str | None, secret: str) -> bool:
    """True when `header_sig` is the HMAC of `body` in either accepted form. Never raises.

    A missing or empty header or secret is False. Comparison is constant-time, and both
    forms are always computed so timing does not tell which one matched.
    """
    try:
        if not isinstance(header_sig, str) or not header_sig or not _is_text(secret):
            return False
        try:
            given = header_sig.encode("ascii")
        except UnicodeEncodeError:
            return False
        tree = _load(body, literal=True)
        matched = False
        for form in IPN_SIGNATURE_FORMS:
            expected = _hmac_hex(_canonical(tree, form), secret).encode("ascii")
            matched |= hmac.compare_digest(expected, given)
        return matched
    except (IpnError, RecursionError):
        return False


class IpnPayload(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded IPN. Amounts are exact `Decimal`s; currencies are lower-case; `raw` is the
    whole parsed body (floats as `Decimal`) for logging and fields we do not lift out.

    Decoding does not authenticate: call `verify_ipn_signature` on the same bytes first.
    """

    payment_id: str
    payment_status: PaymentStatus
    order_id: str | None
    price_amount: Decimal
    price_currency: str
    pay_amount: Decimal | None = None
    actually_paid: Decimal | None = None
    actually_paid_at_fiat: Decimal | None = None
    pay_currency: str | None = None
    outcome_amount: Decimal | None = None
    outcome_currency: str | None = None
    invoice_id: str | None = None
    parent_payment_id: str | None = None
    purchase_id: str | None = None
    order_description: str | None = None
    updated_at: str | None = None
    raw: dict[str, Any] = msgspec.field(default_factory=dict)


_NUMERIC_RE: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_MAX_TEXT: Final = 256


def _amount(raw: dict[str, Any], key: str) -> Decimal | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise IpnError(f"{key} is not a number")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and len(value) <= 64 and _NUMERIC_RE.fullmatch(value):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise IpnError(f"{key} is not a number") from None
    else:
        raise IpnError(f"{key} is not a number")
    if not amount.is_finite() or not -40 <= amount.adjusted() <= 40:
        raise IpnError(f"{key} is out of range")
    if amount < 0:
        raise IpnError(f"{key} is negative")
    return amount


def _ident(raw: dict[str, Any], key: str) -> str | None:
    """Ids arrive as numbers or strings depending on the endpoint; we hold them as text."""
    value = raw.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and len(value) <= _MAX_TEXT and value.isprintable():
        return value
    raise IpnError(f"{key} is not an id")


def _text(raw: dict[str, Any], key: str, *, lower: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 4 * _MAX_TEXT:
        raise IpnError(f"{key} is not text")
    return value.lower() if lower else value


def decode_ipn(body: bytes) -> IpnPayload:
    """Decode and validate an IPN body; `IpnError` with a reason for anything we refuse."""
    raw = _load(body, literal=False)
    if not isinstance(raw, dict):
        raise IpnError("body is not a JSON object")
    status = raw.get("payment_status")
    if not isinstance(status, str) or status not in IPN_STATUSES:
        raise IpnError(f"payment_status {str(status)[:40]!r} is not a known status")
    price_currency = _text(raw, "price_currency", lower=True)
    if not price_currency:
        raise IpnError("price_currency is missing")
    price_amount = _amount(raw, "price_amount")
    if price_amount is None:
        raise IpnError("price_amount is missing")
    payment_id = _ident(raw, "payment_id")
    if payment_id is None:
        raise IpnError("payment_id is missing")
    return IpnPayload(
        payment_id=payment_id,
        payment_status=PaymentStatus(status),
        order_id=_ident(raw, "order_id"),
        price_amount=price_amount,
        price_currency=price_currency,
        pay_amount=_amount(raw, "pay_amount"),
        actually_paid=_amount(raw, "actually_paid"),
        actually_paid_at_fiat=_amount(raw, "actually_paid_at_fiat"),
        pay_currency=_text(raw, "pay_currency", lower=True),
        outcome_amount=_amount(raw, "outcome_amount"),
        outcome_currency=_text(raw, "outcome_currency", lower=True),
        invoice_id=_ident(raw, "invoice_id"),
        parent_payment_id=_ident(raw, "parent_payment_id"),
        purchase_id=_ident(raw, "purchase_id"),
        order_description=_text(raw, "order_description"),
        updated_at=_text(raw, "updated_at"),
        raw=raw,
    )
