"""Channel statistics: resolution, win rate, gains, the unrated rule and the leaderboard."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.channel_stats_logic import (
    GAIN_CAP,
    RESOLVE_AFTER,
    WIN_WITHIN,
    CallOutcome,
    compute_channel_stats,
    leaderboard,
)
from messages.filters import ChannelStats

NOW = 1_700_000_000.0
HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY
WINDOW = 30 * DAY


def call(
    channel: int,
    age: float,
    peak: float | None = 1.0,
    hit_after: float | None = None,
    fdv: float = 100_000.0,
) -> CallOutcome:
    """A call `age` seconds ago whose peak was `peak` x and which hit 2x `hit_after` s in."""
    called_at = NOW - age
    return CallOutcome(
        channel,
        called_at,
        fdv,
        None if peak is None else fdv * peak,
        None if hit_after is None else called_at + hit_after,
    )


def stats_of(calls: list[CallOutcome], min_sample: int = 1) -> dict[int, ChannelStats]:
    return compute_channel_stats(calls, NOW, WINDOW, min_sample)


def test_a_young_call_that_has_not_hit_2x_is_unresolved() -> None:
    st_ = stats_of([call(1, 2 * HOUR, peak=1.6)])[1]
    assert (st_.calls, st_.resolved, st_.win_rate) == (1, 0, 0.0)
    assert not st_.rated


def test_a_young_call_that_hit_2x_is_a_resolved_win() -> None:
    st_ = stats_of([call(1, 2 * HOUR, peak=3.0, hit_after=HOUR)])[1]
    assert (st_.calls, st_.resolved, st_.wins, st_.win_rate) == (1, 1, 1, 100.0)
    assert st_.avg_gain == 3.0


def test_a_call_older_than_a_day_without_2x_is_a_resolved_loss() -> None:
    st_ = stats_of([call(1, RESOLVE_AFTER, peak=1.4), call(1, RESOLVE_AFTER - 1, peak=1.4)])[1]
    assert (st_.calls, st_.resolved, st_.wins) == (2, 1, 0)
    assert st_.win_rate == 0.0 and st_.avg_gain == 1.4


def test_2x_after_seven_days_is_not_a_win() -> None:
    late = call(1, 10 * DAY, peak=4.0, hit_after=WIN_WITHIN + 1)
    on_time = call(1, 10 * DAY, peak=4.0, hit_after=WIN_WITHIN)
    assert stats_of([late])[1].wins == 0
    assert stats_of([on_time])[1].wins == 1


def test_a_2x_time_in_the_future_does_not_count_yet() -> None:
    assert stats_of([call(1, HOUR, peak=2.5, hit_after=2 * HOUR)])[1].resolved == 0


def test_win_rate_average_and_median() -> None:
    calls = [
        call(7, 3 * DAY, peak=5.0, hit_after=HOUR),
        call(7, 3 * DAY, peak=2.0, hit_after=HOUR),
        call(7, 3 * DAY, peak=1.2),
        call(7, 3 * DAY, peak=1.0),
        call(7, HOUR, peak=1.5),  # unresolved: counted as a call, not in the rates
    ]
    st_ = stats_of(calls)[7]
    assert (st_.calls, st_.resolved, st_.wins) == (5, 4, 2)
    assert st_.win_rate == 50.0
    assert st_.avg_gain == pytest.approx((5.0 + 2.0 + 1.2 + 1.0) / 4)
    assert st_.median_gain == pytest.approx((1.2 + 2.0) / 2)


def test_peaks_are_floored_at_1x_and_wins_at_2x() -> None:
    calls = [call(1, 2 * DAY, peak=0.3), call(1, 2 * DAY, peak=None), call(1, 2 * DAY, 1.5, HOUR)]
    st_ = stats_of(calls)[1]
    assert st_.avg_gain == pytest.approx((1.0 + 1.0 + 2.0) / 3)


def test_channels_below_min_sample_are_unrated() -> None:
    calls = [call(1, 2 * DAY, 3.0, HOUR) for _ in range(4)] + [call(2, 2 * DAY) for _ in range(5)]
    result = stats_of(calls, min_sample=5)
    assert not result[1].rated and result[1].win_rate == 100.0  # still shown, never trusted
    assert result[2].rated and result[2].win_rate == 0.0


def test_window_and_malformed_rows() -> None:
    calls = [
        call(1, WINDOW + 1, 3.0, HOUR),  # too old for the window
        call(1, -HOUR, 3.0),  # in the future
        CallOutcome(1, NOW - 2 * DAY, 0.0, 10.0, None),
        CallOutcome(1, NOW - 2 * DAY, math.nan, 10.0, None),
        CallOutcome(1, math.inf, 1.0, 10.0, None),
        call(1, 2 * DAY, peak=math.nan),
        call(1, 2 * DAY, peak=1.5, hit_after=math.nan),
    ]
    st_ = stats_of(calls)[1]
    assert (st_.calls, st_.resolved, st_.wins) == (2, 2, 0)
    assert stats_of([]) == {}


def test_leaderboard_orders_by_win_rate_then_sample() -> None:
    def s(cid: int, wr: float, resolved: int, rated: bool = True) -> ChannelStats:
        return ChannelStats(
            channel_id=cid,
            calls=resolved,
            resolved=resolved,
            win_rate=wr,
            avg_gain=2.0,
            median_gain=1.5,
            rated=rated,
        )

    board = {1: s(1, 40.0, 50), 2: s(2, 60.0, 10), 3: s(3, 60.0, 30), 4: s(4, 90.0, 2, False)}
    assert [x.channel_id for x in leaderboard(board)] == [3, 2, 1]
    assert [x.channel_id for x in leaderboard(board, 2)] == [3, 2]
    assert leaderboard(board, rated_only=False)[0].channel_id == 4


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 5),
            st.floats(0, 40 * DAY),
            st.floats(allow_nan=True, allow_infinity=True),
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
            st.one_of(st.none(), st.floats(0, 10 * DAY)),
        ),
        max_size=40,
    ),
    st.integers(0, 10),
)
def test_stats_invariants(
    rows: list[tuple[int, float, float, float | None, float | None]], min_sample: int
) -> None:
    calls = [
        CallOutcome(c, NOW - age, fdv, peak, None if hit is None else NOW - age + hit)
        for c, age, fdv, peak, hit in rows
    ]
    for st_ in compute_channel_stats(calls, NOW, WINDOW, min_sample).values():
        assert 0 <= st_.wins <= st_.resolved <= st_.calls
        assert 0.0 <= st_.win_rate <= 100.0
        assert st_.rated == (st_.resolved >= max(1, min_sample))
        if st_.resolved:
            assert 1.0 <= st_.median_gain <= GAIN_CAP
            assert 1.0 <= st_.avg_gain <= GAIN_CAP * (1 + 1e-12)
