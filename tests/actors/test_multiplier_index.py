"""The multiplier index: one alert per crossing (naming the highest), never twice, rebuilds."""

from __future__ import annotations

import math
import struct

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.multiplier_index import Alert, BlobError, Entry, MultiplierIndex

PROPERTY = settings(max_examples=200, deadline=None)
NOW = 1_700_000_000.0
DAY = 86_400.0
TOKEN = "solana:So11111111111111111111111111111111111111112"


def thresholds(alerts: list[Alert]) -> list[tuple[int, float]]:
    return sorted((a.user_id, a.threshold) for a in alerts)


def test_crossing_2x_then_5x_sends_two_alerts() -> None:
    index = MultiplierIndex()
    assert index.track(TOKEN, 1, 100_000.0, NOW)
    assert index.on_price(TOKEN, 150_000.0) == []
    first = index.on_price(TOKEN, 200_000.0)
    assert first == [Alert(1, TOKEN, 2.0, 2.0, 100_000.0)]
    assert index.on_price(TOKEN, 300_000.0) == []
    second = index.on_price(TOKEN, 510_000.0)
    assert thresholds(second) == [(1, 5.0)]
    assert second[0].multiple == pytest.approx(5.1)


def test_jump_from_1x_to_12x_sends_one_alert_naming_10x() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 1_000.0, NOW)
    alerts = index.on_price(TOKEN, 12_000.0)
    assert len(alerts) == 1
    assert alerts[0].threshold == 10 and alerts[0].multiple == pytest.approx(12.0)
    assert index.entries_for(TOKEN) == [Entry(1, 1_000.0, 2, NOW)]


def test_nothing_is_sent_twice() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    index.track(TOKEN, 2, 40.0, NOW)
    sent = []
    for price in (210, 190, 210, 250, 90, 220, 1_000, 999, 1_001, 2_100, 20_000, 5, 20_000):
        sent += index.on_price(TOKEN, float(price))
    # user 1 (from 100): 2x, 10x, 20x, 100x (jumps name the highest); user 2 (from 40):
    # 5x, 20x, 50x, 100x.
    assert thresholds(sent) == [
        (1, 2.0), (1, 10.0), (1, 20.0), (1, 100.0),
        (2, 5.0), (2, 20.0), (2, 50.0), (2, 100.0),
    ]  # fmt: skip
    assert index.on_price(TOKEN, 1e12) == []


def test_each_user_counts_from_their_own_fdv() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    index.track(TOKEN, 2, 300.0, NOW)
    assert thresholds(index.on_price(TOKEN, 600.0)) == [(1, 5.0), (2, 2.0)]


def test_track_twice_and_untrack() -> None:
    index = MultiplierIndex()
    assert index.track(TOKEN, 1, 100.0, NOW)
    assert not index.track(TOKEN, 1, 50.0, NOW)  # the first FDV stays
    assert index.is_tracked(TOKEN, 1) and len(index) == 1
    assert index.untrack(TOKEN, 1)
    assert not index.untrack(TOKEN, 1)
    assert TOKEN not in index and len(index) == 0
    assert index.on_price(TOKEN, 1e9) == []


def test_untracking_one_user_keeps_the_others_right() -> None:
    index = MultiplierIndex()
    for user in range(1, 11):
        index.track(TOKEN, user, 100.0 * user, NOW)
    index.untrack(TOKEN, 1)  # the lowest next-alert FDV goes away
    assert index.on_price(TOKEN, 250.0) == []
    assert thresholds(index.on_price(TOKEN, 400.0)) == [(2, 2.0)]
    assert [e.user_id for e in index.entries_for(TOKEN)] == [10, 2, 3, 4, 5, 6, 7, 8, 9]


def test_untracked_token_gives_no_alerts() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    assert index.on_price("ethereum:0xnobody", 1e9) == []
    assert index.on_prices([("ethereum:0xnobody", 1e9), (TOKEN, 250.0)]) == [
        Alert(1, TOKEN, 2.0, 2.5, 100.0)
    ]


@pytest.mark.parametrize("bad", [0.0, -5.0, math.nan, math.inf, -math.inf, "1e9", None, True])
def test_invalid_input_is_ignored(bad: object) -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    assert index.on_price(TOKEN, bad) == []  # type: ignore[arg-type]
    assert not index.track(TOKEN, 2, bad, NOW)  # type: ignore[arg-type]
    if not (isinstance(bad, float) and math.isfinite(bad)):  # any finite time is a time
        assert not index.track(TOKEN, 3, 100.0, bad)  # type: ignore[arg-type]
    assert not index.track(TOKEN, 2**70, 100.0, NOW)
    assert len(index) == 1
    assert thresholds(index.on_price(TOKEN, 200.0)) == [(1, 2.0)]


def test_many_users_and_growth() -> None:
    index = MultiplierIndex()
    for user in range(1_000):
        assert index.track(TOKEN, user, 1_000.0 + user, NOW)
    alerts = index.on_price(TOKEN, 2_500.0)
    assert sorted(a.user_id for a in alerts) == list(range(251))
    assert all(a.threshold == 2.0 for a in alerts)
    assert len(index) == 1_000 and index.nbytes() >= 1_000 * 33


def test_encode_load_round_trip_never_resends() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    index.track(TOKEN, 2, 400.0, NOW + 1)
    index.track("base:0xother", 3, 10.0, NOW + 2)
    assert thresholds(index.on_price(TOKEN, 1_200.0)) == [(1, 10.0), (2, 2.0)]

    blobs = dict(index.iter_blobs())
    assert set(blobs) == {TOKEN, "base:0xother"}
    rebuilt = MultiplierIndex()
    report = rebuilt.load_tokens(blobs.items())
    assert (report.tokens, report.entries, report.dropped, report.rejected) == (2, 3, 0, {})
    assert rebuilt.entries_for(TOKEN) == index.entries_for(TOKEN)
    assert len(rebuilt) == 3 and not rebuilt.dirty_tokens()
    assert rebuilt.on_price(TOKEN, 1_200.0) == []  # already sent before the restart
    assert thresholds(rebuilt.on_price(TOKEN, 2_000.0)) == [(1, 20.0), (2, 5.0)]
    # a reloaded token keeps growing normally
    assert rebuilt.track(TOKEN, 4, 1_000.0, NOW)
    assert thresholds(rebuilt.on_price(TOKEN, 2_000.0)) == [(4, 2.0)]


def test_single_token_load_replaces_and_empty_blob_deletes() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    blob = index.encode_token(TOKEN)
    other = MultiplierIndex()
    other.track(TOKEN, 9, 5.0, NOW)
    assert other.load_token(TOKEN, blob) == 1
    assert [e.user_id for e in other.entries_for(TOKEN)] == [1]
    assert other.load_token(TOKEN, b"") == 0
    assert TOKEN not in other and len(other) == 0
    assert index.encode_token("nope") == b""


def test_rebuild_under_other_thresholds_maps_by_value() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    index.on_price(TOKEN, 600.0)  # 5x sent
    narrower = MultiplierIndex(thresholds=(2, 3, 10))
    narrower.load_token(TOKEN, index.encode_token(TOKEN))
    assert narrower.entries_for(TOKEN)[0].highest_index == 1  # 3x: the highest not above 5x
    assert narrower.on_price(TOKEN, 900.0) == []
    assert thresholds(narrower.on_price(TOKEN, 1_000.0)) == [(1, 10.0)]


def test_expiry_drops_old_entries_and_marks_tokens_dirty() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW - 8 * DAY)
    index.track(TOKEN, 2, 100.0, NOW - 1 * DAY)
    index.track("base:0xold", 3, 100.0, NOW - 9 * DAY)
    index.clear_dirty()
    assert index.expire(NOW) == 2
    assert index.dirty_tokens() == {TOKEN, "base:0xold"}
    assert "base:0xold" not in index and index.encode_token("base:0xold") == b""
    assert [e.user_id for e in index.entries_for(TOKEN)] == [2]
    assert index.newest_notified_at(TOKEN) == NOW - DAY
    assert index.expire(NOW) == 0
    assert thresholds(index.on_price(TOKEN, 200.0)) == [(2, 2.0)]


def test_dirty_tracking_for_write_behind() -> None:
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    assert index.take_dirty() == {TOKEN}
    assert index.dirty_tokens() == set()
    index.on_price(TOKEN, 150.0)
    assert index.dirty_tokens() == set()  # nothing changed
    index.on_price(TOKEN, 200.0)
    assert index.dirty_tokens() == {TOKEN}
    index.clear_dirty()
    index.untrack(TOKEN, 1)
    assert index.dirty_tokens() == {TOKEN}


def _blob(records: list[tuple[int, float, float, int]], thr: tuple[float, ...] = (2, 5)) -> bytes:
    head = struct.pack("<4sB", b"CWM\x03", len(thr)) + struct.pack(f"<{len(thr)}d", *thr)
    body = b"".join(struct.pack("<qddb", *r) for r in records)
    return head + struct.pack("<I", len(records)) + body


def test_bad_rows_and_repeated_users_are_dropped_on_load() -> None:
    index = MultiplierIndex(thresholds=(2, 5))
    blob = _blob(
        [
            (1, 100.0, NOW, -1),
            (1, 50.0, NOW, 0),  # repeated user: the first row wins
            (2, -3.0, NOW, -1),
            (3, math.nan, NOW, -1),
            (4, 100.0, math.inf, -1),
            (5, 100.0, NOW, 7),  # level beyond the thresholds
            (6, 100.0, NOW, 0),
        ]
    )
    report = index.load_tokens([(TOKEN, blob), ("bad", b"CWM\x03\x02"), ("worse", b"junk!")])
    assert (report.entries, report.dropped) == (2, 5)
    assert set(report.rejected) == {"bad", "worse"}
    assert [(e.user_id, e.highest_index) for e in index.entries_for(TOKEN)] == [(1, -1), (6, 0)]
    with pytest.raises(BlobError, match="magic"):
        index.load_token("x", b"XXXX\x01")


@PROPERTY
@given(st.binary(max_size=200))
def test_random_blobs_raise_only_blob_error(blob: bytes) -> None:
    index = MultiplierIndex()
    try:
        index.load_token(TOKEN, blob)
    except BlobError:
        assert TOKEN not in index


@PROPERTY
@given(st.binary(max_size=120), st.integers(0, 400))
def test_mutated_blobs_raise_only_blob_error(noise: bytes, cut: int) -> None:
    source = MultiplierIndex()
    for user in range(5):
        source.track(TOKEN, user, 100.0 + user, NOW)
    source.on_price(TOKEN, 250.0)
    blob = source.encode_token(TOKEN)
    mutated = blob[:cut] + noise + blob[cut + len(noise) :]
    index = MultiplierIndex()
    try:
        loaded = index.load_token(TOKEN, mutated)
    except BlobError:
        return
    assert loaded == len(index) <= 5
    assert index.on_price(TOKEN, 1e300) is not None


# A model: every (token, user) with its FDV at notify and highest threshold index sent.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("track"), st.integers(0, 2), st.integers(0, 4), st.floats(1, 1e6)),
        st.tuples(st.just("untrack"), st.integers(0, 2), st.integers(0, 4), st.just(0.0)),
        st.tuples(st.just("price"), st.integers(0, 2), st.just(0), st.floats(0.5, 1e9)),
        st.tuples(st.just("reload"), st.just(0), st.just(0), st.just(0.0)),
    ),
    max_size=60,
)


@PROPERTY
@given(OPS)
def test_index_matches_a_plain_model(ops: list[tuple[str, int, int, float]]) -> None:
    thr = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
    index = MultiplierIndex(thr)
    model: dict[tuple[str, int], list[float]] = {}
    for op, tok_no, user, value in ops:
        token = f"t{tok_no}"
        if op == "track":
            assert index.track(token, user, value, NOW) == ((token, user) not in model)
            model.setdefault((token, user), [value, -1])
        elif op == "untrack":
            assert index.untrack(token, user) == (model.pop((token, user), None) is not None)
        elif op == "reload":
            blobs = list(index.iter_blobs())
            index = MultiplierIndex(thr)
            index.load_tokens(blobs)
        else:
            expected = []
            for (t, u), entry in model.items():
                if t != token:
                    continue
                reached = max((k for k, m in enumerate(thr) if entry[0] * m <= value), default=-1)
                if reached > entry[1]:
                    entry[1] = reached
                    expected.append((u, thr[reached]))
            assert thresholds(index.on_price(token, value)) == sorted(expected)
        assert len(index) == len(model)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_index_inside_an_event_loop(anyio_backend: str) -> None:
    """The pure index is what the actor calls from its task, on either backend."""
    index = MultiplierIndex()
    index.track(TOKEN, 1, 100.0, NOW)
    sent: list[Alert] = []
    for price in (210.0, 510.0, 1_200.0):
        await anyio.sleep(0)
        sent += index.on_price(TOKEN, price)
    assert [a.threshold for a in sent] == [2.0, 5.0, 10.0]


def test_threshold_configuration_is_checked() -> None:
    for bad in ((), (2, 2), (5, 2), (1.0,), (2, math.inf)):
        with pytest.raises(ValueError):
            MultiplierIndex(thresholds=bad)
    assert MultiplierIndex(thresholds=(1.5, 3)).thresholds == (1.5, 3.0)
