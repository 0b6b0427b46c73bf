"""Per-channel track records from call outcomes: win rate, average and median gain.

Pure functions, so the channel-statistics actor only gathers outcomes, calls
`compute_channel_stats` and caches the result, and the rules can be tested alone.

A call *wins* when its FDV reached 2x the FDV at the call within 7 days. A call is
*resolved* once it won or is at least 24 h old; only resolved calls enter win rate and
gains, so a channel is not punished for calls that have not had time to move. Gains
are peak multiples (never below 1x: the price at the call is part of the record; never
above `GAIN_CAP`).
A channel with fewer resolved calls than the minimum sample is unrated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

import numpy as np

from messages.filters import ChannelStats

__all__ = [
    "GAIN_CAP",
    "RESOLVE_AFTER",
    "WIN_MULTIPLE",
    "WIN_WITHIN",
    "CallOutcome",
    "compute_channel_stats",
    "leaderboard",
]

WIN_MULTIPLE: Final = 2.0
WIN_WITHIN: Final = 7 * 24 * 3600.0
RESOLVE_AFTER: Final = 24 * 3600.0
GAIN_CAP: Final = 1_000_000.0
"""Peak multiples are capped so one absurd price print cannot make an average infinite."""


class CallOutcome(NamedTuple):
    """One channel call and what its price did afterwards.

    `peak_fdv` is the highest FDV seen since the call (None if unknown); `hit_2x_at` is
    when the FDV first reached twice `fdv_at_call`, None if it has not.
    """

    channel_id: int
    called_at: float
    fdv_at_call: float
    peak_fdv: float | None
    hit_2x_at: float | None = None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def compute_channel_stats(
    calls: Iterable[CallOutcome],
    now: float,
    window: float,
    min_sample: int,
) -> dict[int, ChannelStats]:
    """Statistics per channel over calls made in [now - window, now].

    Malformed outcomes (non-finite or non-positive FDV at call, non-finite time) are
    skipped rather than raised: one bad history row must not hide every channel.
    """
    since = now - window
    counts: dict[int, list[int]] = {}  # channel -> [calls, wins]
    gains: dict[int, list[float]] = {}
    for call in calls:
        channel_id, called_at, fdv_at_call, peak_fdv, hit_at = call
        if not (_finite(called_at) and _finite(fdv_at_call)) or fdv_at_call <= 0:
            continue
        if not since <= called_at <= now:
            continue
        entry = counts.get(channel_id)
        if entry is None:
            entry = counts[channel_id] = [0, 0]
            gains[channel_id] = []
        entry[0] += 1
        won = (
            hit_at is not None
            and _finite(hit_at)
            and hit_at <= now
            and hit_at - called_at <= WIN_WITHIN
        )
        if not won and now - called_at < RESOLVE_AFTER:
            continue
        gain = peak_fdv / fdv_at_call if peak_fdv is not None and _finite(peak_fdv) else 1.0
        gain = min(max(gain, WIN_MULTIPLE if won else 1.0), GAIN_CAP)
        if won:
            entry[1] += 1
        gains[channel_id].append(gain)
    floor = max(1, min_sample)
    result: dict[int, ChannelStats] = {}
    for channel_id, (n_calls, wins) in counts.items():
        resolved = gains[channel_id]
        n = len(resolved)
        if n:
            arr = np.asarray(resolved, dtype=np.float64)
            avg, median = float(arr.mean()), float(np.median(arr))
        else:
            avg = median = 0.0
        result[channel_id] = ChannelStats(
            channel_id=channel_id,
            calls=n_calls,
            resolved=n,
            win_rate=100.0 * wins / n if n else 0.0,
            avg_gain=avg,
            median_gain=median,
            rated=n >= floor,
            wins=wins,
        )
    return result


def leaderboard(
    stats: Mapping[int, ChannelStats] | Iterable[ChannelStats],
    limit: int = 10,
    *,
    rated_only: bool = True,
) -> list[ChannelStats]:
    """Top channels by win rate; ties go to the bigger sample, then the higher median."""
    values = stats.values() if isinstance(stats, Mapping) else stats
    chosen = [s for s in values if s.rated or not rated_only]
    chosen.sort(key=lambda s: (-s.win_rate, -s.resolved, -s.median_gain, s.channel_id))
    return chosen[: max(0, limit)]
