"""Wire schemas of the signal feed: ``token_event`` and ``price_update``.

Everything here is decoded from an untrusted socket.io stream, so decoding is one strict
msgspec pass (no coercion, constraints checked in C) and every failure becomes a
`WireRejected` whose ``reason`` is one of a few fixed strings (a safe metrics label) and
whose ``detail`` names the offending field by its wire path (``$.calls[0].fdvAtCall``).

Field names follow DexScreener (camelCase on the wire, snake_case in Python). Addresses
are kept exactly as sent: Solana's base58 is case-sensitive, and lower-casing EVM
addresses here would make the same token look different from what a user pastes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Literal, NoReturn, TypeAlias, TypeVar

import msgspec
from msgspec import Meta

__all__ = [
    "KINDS",
    "MAX_CALLS",
    "MAX_PAYLOAD_BYTES",
    "REJECT_REASONS",
    "SCHEMA_VERSION",
    "ChannelCall",
    "PriceUpdate",
    "RejectReason",
    "TokenEvent",
    "WireEvent",
    "WireRejected",
    "decode_event",
    "decode_price_update",
    "decode_token_event",
    "encode",
]

SCHEMA_VERSION: Final = 1
"""The only ``v`` this build understands; a feed that bumps it is refused, not guessed at."""

MAX_PAYLOAD_BYTES: Final = 64 * 1024
"""Largest accepted event, in UTF-8 bytes of the raw JSON text."""

MAX_CALLS: Final = 512
"""Most channel calls one token event may carry (well above any real token's)."""

MAX_TIMESTAMP: Final = 1e10
"""Unix seconds beyond 2286 are refused: they are nearly always milliseconds sent by mistake."""

RejectReason: TypeAlias = Literal[
    "oversize",
    "malformed_json",
    "unknown_version",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_kind",
]
REJECT_REASONS: Final[tuple[RejectReason, ...]] = (
    "oversize",
    "malformed_json",
    "unknown_version",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_kind",
)
"""Every value `WireRejected.reason` can take, for pre-registering metric labels."""

_DETAIL_MAX: Final = 200


class WireRejected(Exception):
    """An event from the feed was refused; ``reason`` is a metrics label, ``detail`` says why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        if len(detail) > _DETAIL_MAX:
            detail = detail[: _DETAIL_MAX - 3] + "..."
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail: str = detail

    def __reduce__(self) -> tuple[type[WireRejected], tuple[str, str]]:
        return (type(self), (self.reason, self.detail))


_FLOAT_MAX: Final = sys.float_info.max
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"

Version = Annotated[int, Meta(ge=SCHEMA_VERSION, le=SCHEMA_VERSION)]
Seq = Annotated[int, Meta(ge=1, le=_INT64_MAX)]
Timestamp = Annotated[float, Meta(ge=0.0, le=MAX_TIMESTAMP)]
NonNegative = Annotated[float, Meta(ge=0.0, le=_FLOAT_MAX)]
Positive = Annotated[float, Meta(gt=0.0, le=_FLOAT_MAX)]
EventId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
ChainId = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
Address = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$")
]
PriceText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[0-9]{1,40}(?:\.[0-9]{1,40})?(?:[eE][+\-]?[0-9]{1,3})?$",
    ),
]
"""A non-negative finite decimal as text (DexScreener's ``priceUsd``): no sign, NaN or inf."""
Symbol = Annotated[str, Meta(min_length=1, max_length=64, pattern=_NO_CONTROL)]
Name = Annotated[str, Meta(max_length=200, pattern=_NO_CONTROL)]
Username = Annotated[str, Meta(min_length=1, max_length=64, pattern=_NO_CONTROL)]
ChannelId = Annotated[int, Meta(ge=_INT64_MIN, le=_INT64_MAX)]
"""Any int64: Bot API channel ids are negative (-100...), MTProto ones positive."""
MessageId = Annotated[int, Meta(ge=1, le=_INT64_MAX)]


class ChannelCall(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """One signal channel posting the token: who, which message, when, at what FDV."""

    channel_id: ChannelId
    username: Username
    message_id: MessageId
    called_at: Timestamp
    fdv_at_call: Positive


class _Event(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """Fields every feed event carries: envelope first, then the pair's market data.

    ``gc=False`` (here and on `ChannelCall`): frozen scalars and tuples of calls can never
    be part of a reference cycle, so the cyclic garbage collector need not walk the
    thousands of events in flight (a full pass over them stalled the loop for tens of
    milliseconds).
    """

    KIND: ClassVar[str]

    v: Version
    event_id: EventId
    seq: Seq
    emitted_at: Timestamp
    chain_id: ChainId
    token_address: Address
    pair_address: Address
    price_usd: PriceText
    fdv: NonNegative
    market_cap: NonNegative
    liquidity_usd: NonNegative
    volume_h24: NonNegative

    @property
    def token_key(self) -> str:
        """``chain:address``, the index key everywhere (chain ids never contain ``:``)."""
        return f"{self.chain_id}:{self.token_address}"

    @property
    def price_decimal(self) -> Decimal:
        """``price_usd`` as an exact `Decimal` (the schema guarantees it parses, finite, >= 0)."""
        return Decimal(self.price_usd)


class TokenEvent(_Event, frozen=True, kw_only=True, rename="camel"):
    """A token was called by one or more channels; repeated with a longer ``calls`` list
    (and a new ``event_id`` and ``seq``) whenever another channel calls it."""

    KIND: ClassVar[str] = "token_event"

    fdv: Positive
    symbol: Symbol
    name: Name
    calls: Annotated[tuple[ChannelCall, ...], Meta(min_length=1, max_length=MAX_CALLS)]


class PriceUpdate(_Event, frozen=True, kw_only=True, rename="camel"):
    """The latest market data of a token's pair."""

    KIND: ClassVar[str] = "price_update"


WireEvent: TypeAlias = TokenEvent | PriceUpdate
KINDS: Final[tuple[str, ...]] = (TokenEvent.KIND, PriceUpdate.KIND)
"""The socket.io event names that carry feed events."""

_E = TypeVar("_E", TokenEvent, PriceUpdate)

_DECODERS: Final[dict[type[Any], msgspec.json.Decoder[Any]]] = {
    TokenEvent: msgspec.json.Decoder(TokenEvent),
    PriceUpdate: msgspec.json.Decoder(PriceUpdate),
}
_ENCODER: Final = msgspec.json.Encoder()


class _VersionProbe(msgspec.Struct):
    v: Any = msgspec.UNSET


_PROBE: Final = msgspec.json.Decoder(_VersionProbe)
_AT_PATH: Final = re.compile(r"^(?P<msg>.*?) - at (?P<path>.+)$", re.DOTALL)
_MISSING: Final = re.compile(r"^Object missing required field `(?P<field>[^`]*)`$")
_WRONG_TYPE: Final = re.compile(r"^Expected `[^`]+`(?:, got `[^`]+`)?$")


def encode(event: WireEvent) -> bytes:
    """The event as compact JSON text, fields in declaration order (``v`` first)."""
    return _ENCODER.encode(event)


def decode_token_event(
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> TokenEvent:
    """Decode and validate one ``token_event``; raises only `WireRejected`."""
    return _decode(TokenEvent, raw, max_bytes)


def decode_price_update(
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> PriceUpdate:
    """Decode and validate one ``price_update``; raises only `WireRejected`."""
    return _decode(PriceUpdate, raw, max_bytes)


def decode_event(
    kind: str,
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any],
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> WireEvent:
    """Decode the payload of socket.io event ``kind``; raises only `WireRejected`."""
    if kind == TokenEvent.KIND:
        return _decode(TokenEvent, raw, max_bytes)
    if kind == PriceUpdate.KIND:
        return _decode(PriceUpdate, raw, max_bytes)
    shown = kind[:64] if isinstance(kind, str) else type(kind).__name__
    raise WireRejected("unknown_kind", f"event name {shown!r} (expected one of {KINDS})")


def _decode(
    cls: type[_E],
    raw: bytes | bytearray | memoryview | str | Mapping[str, Any],
    max_bytes: int,
) -> _E:
    if isinstance(raw, str | bytes | bytearray | memoryview):
        return _decode_text(cls, raw, max_bytes)
    if isinstance(raw, Mapping):
        return _decode_mapping(cls, raw, max_bytes)
    raise WireRejected(
        "wrong_type", f"$: expected JSON text or an object, got {type(raw).__name__}"
    )


def _decode_text(cls: type[_E], raw: bytes | bytearray | memoryview | str, max_bytes: int) -> _E:
    size = len(raw) if not isinstance(raw, memoryview) else raw.nbytes
    if isinstance(raw, str) and size * 4 > max_bytes:
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise WireRejected("oversize", f"$: {size} bytes > {max_bytes}")
    try:
        result: _E = _DECODERS[cls].decode(raw)
    except msgspec.ValidationError as exc:
        _check_version(_probe_text(raw))
        _reject_validation(exc)
    except msgspec.DecodeError as exc:
        raise WireRejected("malformed_json", f"$: {exc}") from None
    except RecursionError:
        raise WireRejected("malformed_json", "$: nesting too deep") from None
    except UnicodeError as exc:
        raise WireRejected("malformed_json", f"$: invalid text ({type(exc).__name__})") from None
    return result


def _decode_mapping(cls: type[_E], raw: Mapping[str, Any], max_bytes: int) -> _E:
    try:
        obj = raw if isinstance(raw, dict) else dict(raw)
        size = len(_ENCODER.encode(obj))
    except RecursionError:
        raise WireRejected("malformed_json", "$: nesting too deep") from None
    except Exception as exc:  # an arbitrary Mapping may raise anything while iterated
        raise WireRejected(
            "wrong_type", f"$: not representable as JSON ({type(exc).__name__})"
        ) from None
    if size > max_bytes:
        raise WireRejected("oversize", f"$: {size} bytes > {max_bytes}")
    try:
        result: _E = msgspec.convert(obj, cls)
    except msgspec.ValidationError as exc:
        _check_version(obj.get("v", msgspec.UNSET))
        _reject_validation(exc)
    except RecursionError:
        raise WireRejected("malformed_json", "$: nesting too deep") from None
    return result


def _probe_text(raw: bytes | bytearray | memoryview | str) -> Any:
    try:
        return _PROBE.decode(raw).v
    except (msgspec.DecodeError, RecursionError, UnicodeError):
        return None


def _check_version(v: Any) -> None:
    """Name a version problem before anything else: a v2 event fails in many places at once."""
    if v is msgspec.UNSET:
        raise WireRejected("missing_field", "$.v: schema version missing")
    if isinstance(v, bool) or not isinstance(v, int):
        if v is not None:
            raise WireRejected("wrong_type", f"$.v: expected int, got {type(v).__name__}")
        return
    if v != SCHEMA_VERSION:
        shown = repr(v) if -(10**12) < v < 10**12 else "out of range"
        raise WireRejected("unknown_version", f"$.v: {shown} (supported: {SCHEMA_VERSION})")


def _reject_validation(exc: msgspec.ValidationError) -> NoReturn:
    text = str(exc)
    at = _AT_PATH.match(text)
    msg, path = (at["msg"], at["path"].replace("`", "")) if at else (text, "$")
    missing = _MISSING.match(msg)
    if missing:
        raise WireRejected("missing_field", f"{path}.{missing['field']}") from None
    if _WRONG_TYPE.match(msg):
        raise WireRejected("wrong_type", f"{path}: {msg}") from None
    if path == "$.calls" and "of length <=" in msg:
        raise WireRejected("oversize", f"{path}: more than {MAX_CALLS} calls") from None
    raise WireRejected("invalid_value", f"{path}: {msg}") from None
