"""The feed's wire decoders: strict, and nothing but `WireRejected` ever escapes them."""

from __future__ import annotations

import copy
import json
import math
import sys
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages.wire import (
    KINDS,
    MAX_CALLS,
    MAX_PAYLOAD_BYTES,
    REJECT_REASONS,
    SCHEMA_VERSION,
    ChannelCall,
    PriceUpdate,
    TokenEvent,
    WireEvent,
    WireRejected,
    decode_event,
    decode_price_update,
    decode_token_event,
    encode,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

# -- strategies ---------------------------------------------------------------------------

solana_address = st.text(alphabet=BASE58, min_size=32, max_size=44)
evm_address = st.text(alphabet="0123456789abcdefABCDEF", min_size=40, max_size=40).map(
    lambda h: "0x" + h
)
address = st.one_of(solana_address, evm_address)
chain = st.sampled_from(["solana", "ethereum", "base", "bsc", "arbitrum", "ton"])
clean_text = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=40
)
non_negative = st.floats(min_value=0.0, max_value=sys.float_info.max, allow_nan=False)
positive = st.floats(min_value=0.0, max_value=1e15, exclude_min=True, allow_nan=False)
timestamp = st.floats(min_value=0.0, max_value=1e10, allow_nan=False)
price_text = st.decimals(
    min_value=0, max_value=Decimal(10) ** 12, allow_nan=False, allow_infinity=False, places=18
).map(lambda d: format(d.copy_abs(), "f"))
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
positive_int64 = st.integers(min_value=1, max_value=2**63 - 1)
event_id = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEF0123456789-_.:", min_size=1, max_size=64
)

calls = st.builds(
    ChannelCall,
    channel_id=int64,
    username=clean_text,
    message_id=positive_int64,
    called_at=timestamp,
    fdv_at_call=positive,
)


def _event_fields() -> dict[str, Any]:
    return {
        "v": st.just(SCHEMA_VERSION),
        "event_id": event_id,
        "seq": positive_int64,
        "emitted_at": timestamp,
        "chain_id": chain,
        "token_address": address,
        "pair_address": address,
        "price_usd": price_text,
        "market_cap": non_negative,
        "liquidity_usd": non_negative,
        "volume_h24": non_negative,
    }


token_events = st.builds(
    TokenEvent,
    **_event_fields(),
    fdv=positive,
    symbol=clean_text,
    name=st.text(alphabet=st.characters(exclude_categories=("Cc", "Cs")), max_size=60),
    calls=st.lists(calls, min_size=1, max_size=3).map(tuple),
)
price_updates = st.builds(PriceUpdate, **_event_fields(), fdv=non_negative)
events = st.one_of(token_events, price_updates)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=20),
)
json_keys = st.sampled_from(["v", "seq", "fdv", "calls", "eventId", "tokenAddress", "x"]) | st.text(
    max_size=4
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_keys, inner, max_size=4),
    max_leaves=8,
)


def _decode(kind: str, raw: Any) -> WireEvent | None:
    """Decode; the only acceptable failure is `WireRejected` with a known reason."""
    try:
        return decode_event(kind, raw)
    except WireRejected as exc:
        assert exc.reason in REJECT_REASONS
        assert exc.detail
        return None


def _valid_dict(event: WireEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode(event))
    return data


def _rejects(kind: str, raw: Any) -> WireRejected:
    with pytest.raises(WireRejected) as info:
        decode_event(kind, raw)
    return info.value


# -- round trips --------------------------------------------------------------------------


@PROPERTY
@given(event=events)
def test_every_valid_event_round_trips_through_bytes_text_and_mapping(event: WireEvent) -> None:
    raw = encode(event)
    assert decode_event(event.KIND, raw) == event
    assert decode_event(event.KIND, raw.decode()) == event
    assert decode_event(event.KIND, json.loads(raw)) == event
    assert encode(decode_event(event.KIND, raw)) == raw


@PROPERTY
@given(solana=solana_address)
def test_solana_addresses_keep_their_case(solana: str) -> None:
    event = _token_event(chain_id="solana", token_address=solana)
    decoded = decode_token_event(encode(event))
    assert decoded.token_address == solana
    assert decoded.token_key == f"solana:{solana}"


def test_evm_addresses_are_not_normalised() -> None:
    mixed = "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01"
    raw = _valid_dict(_price_update())
    raw.update(chainId="base", tokenAddress=mixed)
    assert decode_price_update(raw).token_key == f"base:{mixed}"


def test_wire_names_are_dexscreener_camel_case() -> None:
    data = _valid_dict(_token_event())
    assert list(data) == [
        "v", "eventId", "seq", "emittedAt", "chainId", "tokenAddress", "pairAddress",
        "priceUsd", "fdv", "marketCap", "liquidityUsd", "volumeH24", "symbol", "name", "calls",
    ]  # fmt: skip
    assert list(data["calls"][0]) == [
        "channelId", "username", "messageId", "calledAt", "fdvAtCall",
    ]  # fmt: skip
    assert data["v"] == SCHEMA_VERSION
    assert isinstance(data["priceUsd"], str)


def test_price_decimal_is_exact() -> None:
    event = _token_event(price_usd="0.000000123456789")
    assert decode_token_event(encode(event)).price_decimal == Decimal("0.000000123456789")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    data = _valid_dict(_price_update())
    data["dexId"] = "raydium"
    assert decode_price_update(data) == _price_update()


def test_events_are_frozen_and_hashable() -> None:
    event = _token_event()
    with pytest.raises(AttributeError):
        event.fdv = 1.0  # type: ignore[misc]
    assert {event: 1}[decode_token_event(encode(event))] == 1


# -- fuzzing: nothing but WireRejected ----------------------------------------------------


@PROPERTY
@given(kind=st.sampled_from(KINDS), raw=st.binary(max_size=300))
def test_random_bytes_only_ever_reject(kind: str, raw: bytes) -> None:
    _decode(kind, raw)


@PROPERTY
@given(
    kind=st.sampled_from(KINDS),
    raw=st.text(alphabet=st.characters(exclude_categories=()), max_size=200),
)
def test_random_text_including_lone_surrogates_only_ever_rejects(kind: str, raw: str) -> None:
    _decode(kind, raw)


@PROPERTY
@given(kind=st.sampled_from(KINDS), value=json_values)
def test_random_json_values_only_ever_reject(kind: str, value: Any) -> None:
    assert _decode(kind, json.dumps(value)) is None
    _decode(kind, value)


@PROPERTY
@given(kind=st.text(max_size=20), raw=st.one_of(st.binary(max_size=50), json_scalars))
def test_any_kind_name_is_either_known_or_rejected(kind: str, raw: Any) -> None:
    try:
        decode_event(kind, raw)
    except WireRejected as exc:
        if kind not in KINDS:
            assert exc.reason == "unknown_kind"


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _drop(data: Any, path: tuple[Any, ...]) -> None:
    for key in path[:-1]:
        data = data[key]
    del data[path[-1]]


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


BAD_VALUES = st.one_of(
    json_values,
    st.sampled_from([math.nan, math.inf, -math.inf, -1, -1e-300, 2**64, "", " ", True, 0]),
)


@PROPERTY
@given(event=events, data=st.data())
def test_mutated_valid_payloads_decode_or_reject_cleanly(event: WireEvent, data: Any) -> None:
    payload = _valid_dict(event)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(payload)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["drop", "replace", "negate", "pad"]))
        if action == "drop" and isinstance(path[-1], str):
            _drop(payload, path)
        elif action == "negate" and isinstance(_get(payload, path), int | float):
            _set(payload, path, -_get(payload, path))
        elif action == "pad":
            _set(payload, path, "x" * data.draw(st.sampled_from([10, 1000, MAX_PAYLOAD_BYTES])))
        else:
            _set(payload, path, data.draw(BAD_VALUES))
    for raw in (payload, json.dumps(payload), json.dumps(payload).encode()):
        decoded = _decode(event.KIND, raw)
        if decoded is not None:
            assert decode_event(event.KIND, encode(decoded)) == decoded


FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FEW
@given(event=events)
def test_each_dropped_field_is_named(event: WireEvent) -> None:
    for field in _valid_dict(event):
        payload = _valid_dict(event)
        del payload[field]
        exc = _rejects(event.KIND, json.dumps(payload))
        assert exc.reason == "missing_field"
        assert exc.detail.startswith(f"$.{field}")


NUMBER_FIELDS = ["fdv", "marketCap", "liquidityUsd", "volumeH24", "emittedAt", "seq"]


@FEW
@given(event=events)
def test_negative_and_non_finite_numbers_are_rejected(event: WireEvent) -> None:
    for field in NUMBER_FIELDS:
        for bad in (math.nan, math.inf, -math.inf, -1.0, -123456):
            payload = _valid_dict(event)
            payload[field] = bad
            for raw in (payload, json.dumps(payload)):
                exc = _rejects(event.KIND, raw)
                assert exc.reason in {"invalid_value", "malformed_json", "wrong_type"}
        # A valid-JSON overflow to infinity is named precisely.
        payload = _valid_dict(event)
        payload[field] = 1
        text = json.dumps(payload).replace(f'"{field}": 1', f'"{field}": 1e999')
        exc = _rejects(event.KIND, text)
        assert exc.reason in {"invalid_value", "wrong_type"}
        assert exc.detail.startswith(f"$.{field}")


# -- each reason, precisely ---------------------------------------------------------------


def _channel_call(**changes: Any) -> ChannelCall:
    fields: dict[str, Any] = {
        "channel_id": -1001234567890,
        "username": "alpha_calls",
        "message_id": 77,
        "called_at": 1_700_000_000.5,
        "fdv_at_call": 250_000.0,
    }
    fields.update(changes)
    return ChannelCall(**fields)


def _token_event(**changes: Any) -> TokenEvent:
    fields: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "event_id": "e-1",
        "seq": 10,
        "emitted_at": 1_700_000_001.0,
        "chain_id": "solana",
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "pair_address": "8sLbNZoA1cfnvMJLPfp98ZLAnFSYCFApfJKMbiXNLwxj",
        "price_usd": "0.00025",
        "fdv": 250_000.0,
        "market_cap": 250_000.0,
        "liquidity_usd": 40_000.0,
        "volume_h24": 120_000.0,
        "symbol": "POPCAT",
        "name": "Popcat",
        "calls": (_channel_call(),),
    }
    fields.update(changes)
    return TokenEvent(**fields)


def _price_update(**changes: Any) -> PriceUpdate:
    fields: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "event_id": "p-1",
        "seq": 11,
        "emitted_at": 1_700_000_002.0,
        "chain_id": "solana",
        "token_address": "7GCihgDB8fe6KNjn2MYtkzZcRjQy3t9GHdC8uHYmW2hr",
        "pair_address": "8sLbNZoA1cfnvMJLPfp98ZLAnFSYCFApfJKMbiXNLwxj",
        "price_usd": "0.0005",
        "fdv": 500_000.0,
        "market_cap": 500_000.0,
        "liquidity_usd": 60_000.0,
        "volume_h24": 220_000.0,
    }
    fields.update(changes)
    return PriceUpdate(**fields)


@pytest.mark.parametrize(
    ("mutate", "reason", "detail"),
    [
        (lambda d: d.update(v=2), "unknown_version", "$.v: 2"),
        (lambda d: d.pop("v"), "missing_field", "$.v"),
        (lambda d: d.update(v="1"), "wrong_type", "$.v"),
        (lambda d: d.pop("calls"), "missing_field", "$.calls"),
        (lambda d: d["calls"][0].pop("fdvAtCall"), "missing_field", "$.calls[0].fdvAtCall"),
        (lambda d: d.update(seq="10"), "wrong_type", "$.seq"),
        (lambda d: d.update(seq=True), "wrong_type", "$.seq"),
        (lambda d: d.update(seq=0), "invalid_value", "$.seq"),
        (lambda d: d.update(seq=2**64), "invalid_value", "$.seq"),
        (lambda d: d.update(fdv=-1), "invalid_value", "$.fdv"),
        (lambda d: d.update(fdv=0), "invalid_value", "$.fdv"),
        (lambda d: d["calls"][0].update(fdvAtCall=0), "invalid_value", "$.calls[0].fdvAtCall"),
        (lambda d: d["calls"][0].update(messageId=-5), "invalid_value", "$.calls[0].messageId"),
        (lambda d: d.update(calls=[]), "invalid_value", "$.calls"),
        (lambda d: d.update(calls={}), "wrong_type", "$.calls"),
        (lambda d: d.update(calls=d["calls"] * (MAX_CALLS + 1)), "oversize", "$.calls"),
        (lambda d: d.update(tokenAddress=""), "invalid_value", "$.tokenAddress"),
        (lambda d: d.update(tokenAddress="So1 ana"), "invalid_value", "$.tokenAddress"),
        (lambda d: d.update(chainId="sol:ana"), "invalid_value", "$.chainId"),
        (lambda d: d.update(priceUsd="-0.1"), "invalid_value", "$.priceUsd"),
        (lambda d: d.update(priceUsd="NaN"), "invalid_value", "$.priceUsd"),
        (lambda d: d.update(priceUsd="Infinity"), "invalid_value", "$.priceUsd"),
        (lambda d: d.update(priceUsd=0.1), "wrong_type", "$.priceUsd"),
        (lambda d: d.update(emittedAt=1_700_000_000_000), "invalid_value", "$.emittedAt"),
        (lambda d: d.update(symbol="A\nB"), "invalid_value", "$.symbol"),
        (lambda d: d.update(eventId=""), "invalid_value", "$.eventId"),
    ],
)
def test_each_rejection_has_its_reason_and_path(mutate: Any, reason: str, detail: str) -> None:
    payload = _valid_dict(_token_event())
    mutate(payload)
    for raw in (json.dumps(payload), payload):
        exc = _rejects("token_event", raw)
        assert (exc.reason, exc.detail.split(":")[0]) == (reason, detail.split(":")[0])
        assert exc.detail.startswith(detail)


def test_price_strings_that_parse_are_accepted() -> None:
    for text in ["0", "12", "0.00000001234", "1.5e-9", "3E+4"]:
        assert decode_price_update(encode(_price_update(price_usd=text))).price_usd == text


def test_version_is_checked_before_the_rest_of_a_newer_schema() -> None:
    exc = _rejects("price_update", json.dumps({"v": 2, "somethingNew": True}))
    assert exc.reason == "unknown_version"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (b'{"v":1,"fdv":NaN}', "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b'{"v":1,"chainId":"\xff"}', "malformed_json"),
        ('{"v":1,"symbol":"\ud800"}', "malformed_json"),
        (b"[1,2]", "wrong_type"),
        (b"null", "wrong_type"),
        (b'{"x":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "oversize"),
        (b'{"x":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "malformed_json"),
        (42, "wrong_type"),
        (None, "wrong_type"),
        ([1], "wrong_type"),
        ({1: 2}, "missing_field"),
        ({"v": 1, "x": object()}, "wrong_type"),
    ],
)
def test_garbage_is_rejected_with_a_reason(raw: Any, reason: str) -> None:
    assert _rejects("price_update", raw).reason == reason


def test_trailing_garbage_after_a_valid_event_is_malformed() -> None:
    raw = encode(_price_update()) + b" trailing"
    assert _rejects("price_update", raw).reason == "malformed_json"


def test_deeply_nested_mapping_is_rejected() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert _rejects("price_update", {"v": 1, "x": deep}).reason in {"malformed_json", "oversize"}


def test_oversize_is_measured_in_utf8_bytes_of_the_raw_text() -> None:
    base = encode(_price_update())
    room = MAX_PAYLOAD_BYTES - len(base) - len(b',"pad":""')
    fits = base[:-1] + b',"pad":"' + b"x" * room + b'"}'
    assert len(fits) == MAX_PAYLOAD_BYTES
    assert decode_price_update(fits) == _price_update()
    over = base[:-1] + b',"pad":"' + b"x" * (room + 1) + b'"}'
    assert _rejects("price_update", over).reason == "oversize"
    # The same as text with 3-byte characters: few characters, too many bytes.
    text = base.decode()[:-1] + ',"pad":"' + "€" * (MAX_PAYLOAD_BYTES // 3) + '"}'
    assert len(text) < MAX_PAYLOAD_BYTES
    exc = _rejects("price_update", text)
    assert exc.reason == "oversize"
    assert _rejects("price_update", json.loads(over)).reason == "oversize"


def test_max_bytes_is_configurable() -> None:
    raw = encode(_price_update())
    assert decode_price_update(raw, max_bytes=len(raw)) == _price_update()
    with pytest.raises(WireRejected) as info:
        decode_price_update(raw, max_bytes=len(raw) - 1)
    assert info.value.reason == "oversize"


def test_unknown_kind_is_rejected() -> None:
    exc = _rejects("token_evnt", encode(_token_event()))
    assert exc.reason == "unknown_kind"
    assert "token_evnt" in exc.detail


def test_decode_event_dispatches_on_kind() -> None:
    assert isinstance(decode_event("token_event", encode(_token_event())), TokenEvent)
    assert isinstance(decode_event("price_update", encode(_price_update())), PriceUpdate)
    # A token event is not a valid price update's neighbour: kinds are not interchangeable.
    assert _rejects("token_event", encode(_price_update())).reason == "missing_field"


def test_channel_ids_may_be_negative_bot_api_ids() -> None:
    event = _token_event(calls=(_channel_call(channel_id=-1001234567890),))
    assert decode_token_event(encode(event)).calls[0].channel_id == -1001234567890


def test_rejection_detail_is_bounded_and_copyable() -> None:
    exc = WireRejected("invalid_value", "x" * 10_000)
    assert len(exc.detail) <= 200
    again = copy.deepcopy(exc)
    assert (again.reason, again.detail) == (exc.reason, exc.detail)
