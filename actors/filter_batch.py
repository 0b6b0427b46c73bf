"""Deciding batches of token events for a shard's users, pruning by win rate first.

`ShardColumns.decide` costs a couple of dozen numpy operations per event over every user,
whatever the event; at thousands of events per second that is most of the budget. Two
observations make it much cheaper:

* the minimum win rate is the most selective threshold, and a user can only pass when
  at least one rated calling channel reaches it. `BatchColumns` keeps a copy of its
  enabled users sorted by minimum win rate, so one binary search on the event's best
  rated win rate bounds the users worth looking at (about half of real events reach
  nobody's minimum and cost a single comparison), and the vector pass runs on that
  prefix only, as plain slices;
* the router scores the events once for all shards (`FactsBatch`: the rated calling
  channels of each event, most recent call per channel) and hands over everything that
  queued up since its last round in one message, and each event's notification text is
  rendered once, for the first user who passes it.

The rules are `actors.filter_logic`'s; tests hold `decide_batch` equal to `decide_one`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from actors.filter_logic import ShardColumns, chain_key
from actors.texts import notification_text
from messages.filters import ChannelStats, FilterSettings
from messages.wire import TokenEvent

__all__ = ["BatchColumns", "FactsBatch", "RatedEvent"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


class RatedEvent(NamedTuple):
    """One event's rated calling channels as ``(R, 1)`` columns, and what prunes it."""

    position: int
    """The event's index in the batch."""
    chain: str
    fdv: float
    best_win_rate: float
    win_rate: F64
    avg_gain: F64
    age: F64


class FactsBatch:
    """Token events scored against the channel statistics, ready for every shard.

    Only events with at least one rated calling channel can pass anybody; they are
    ``rated`` (with their index into ``events``).
    """

    __slots__ = ("_texts", "events", "lines", "rated", "routed_at", "stats")

    def __init__(
        self,
        events: Sequence[TokenEvent],
        stats: Mapping[int, ChannelStats],
        now: float,
        routed_at: float = 0.0,
        lines: dict[tuple[int, str], str] | None = None,
    ) -> None:
        self.events = tuple(events)
        self.stats = stats
        self.routed_at = routed_at
        self.lines = lines
        """Rendered channel lines for these statistics, shared between batches."""
        rated: list[RatedEvent] = []
        for index, event in enumerate(self.events):
            latest: dict[int, float] = {}
            for call in event.calls:
                previous = latest.get(call.channel_id)
                if previous is None or call.called_at > previous:
                    latest[call.channel_id] = call.called_at
            wr: list[float] = []
            ag: list[float] = []
            age: list[float] = []
            for channel_id, called_at in latest.items():
                st = stats.get(channel_id)
                if st is not None and st.rated:
                    wr.append(st.win_rate)
                    ag.append(st.avg_gain)
                    age.append(now - called_at)
            if wr:
                rated.append(
                    RatedEvent(
                        index,
                        chain_key(event.chain_id),
                        float(event.fdv),
                        max(wr),
                        np.array(wr, dtype=np.float64)[:, None],
                        np.array(ag, dtype=np.float64)[:, None],
                        np.array(age, dtype=np.float64)[:, None],
                    )
                )
        self.rated: tuple[RatedEvent, ...] = tuple(rated)
        self._texts: list[str | None] = [None] * len(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def text(self, index: int) -> str:
        """The notification of event ``index`` (rendered on first use, then shared)."""
        made = self._texts[index]
        if made is None:
            made = self._texts[index] = notification_text(
                self.events[index], self.stats, self.lines
            )
        return made


class _Sorted(NamedTuple):
    """The enabled users who take one chain, their thresholds ordered by minimum win rate."""

    thresholds: list[float]
    """The minimum win rates as a list, for `bisect` (cheaper than numpy for one search)."""
    min_win_rate: F64
    min_avg_gain: F64
    fdv_min: F64
    fdv_max: F64
    min_channels: I64
    lookback: F64
    user_ids: I64


class BatchColumns(ShardColumns):
    """`ShardColumns` with win-rate-ordered copies of the enabled users for `decide_batch`,
    one per chain (only the users who take that chain: the chain test costs nothing per
    event, and the other tests run on fewer users).

    The copies are rebuilt lazily, at the first decision for a chain after a change:
    changes come from people (settings, subscriptions), decisions from the feed.
    """

    def __init__(self, capacity: int = 64) -> None:
        super().__init__(capacity)
        self._sorted: dict[np.uint64, _Sorted] | None = None

    def upsert(self, user_id: int, settings: FilterSettings, *, active: bool | None = None) -> None:
        super().upsert(user_id, settings, active=active)
        self._sorted = None

    def remove(self, user_id: int) -> bool:
        self._sorted = None
        return super().remove(user_id)

    def set_active(self, user_id: int, active: bool) -> bool:
        self._sorted = None
        return super().set_active(user_id, active)

    def set_paused(self, user_id: int, paused: bool) -> bool:
        self._sorted = None
        return super().set_paused(user_id, paused)

    def _view(self, chain: str) -> _Sorted:
        bit = self._chain_bit(chain, assign=False)
        views = self._sorted
        if views is None:
            views = self._sorted = {}
        view = views.get(bit)
        if view is None:
            n = len(self)
            rows = (self.enabled[:n] & ((self.chain_mask[:n] & bit) != 0)).nonzero()[0]
            rows = rows[np.argsort(self.min_win_rate[rows], kind="stable")]
            view = views[bit] = _Sorted(
                self.min_win_rate[rows].tolist(),
                self.min_win_rate[rows],
                self.min_avg_gain[rows],
                self.fdv_min[rows],
                self.fdv_max[rows],
                self.min_channels[rows],
                self.lookback[rows],
                self.user_ids[rows],
            )
        return view

    def decide_batch(self, batch: FactsBatch) -> list[tuple[int, I64]]:
        """(event index, user ids passing it) for every event somebody passes, in order."""
        out: list[tuple[int, I64]] = []
        for event in batch.rated:
            view = self._view(event.chain)
            thresholds = view.thresholds
            if not thresholds or event.best_win_rate < thresholds[0]:
                continue
            # only users whose minimum win rate the event's best channel reaches
            reach = bisect_right(thresholds, event.best_win_rate)
            eligible = view.fdv_min[:reach] <= event.fdv
            eligible &= view.fdv_max[:reach] >= event.fdv
            rows = eligible.nonzero()[0]
            if not rows.shape[0]:
                continue
            qualifies = event.win_rate >= view.min_win_rate[rows][None, :]
            qualifies &= event.avg_gain >= view.min_avg_gain[rows][None, :]
            qualifies &= event.age <= view.lookback[rows][None, :]
            if qualifies.shape[0] == 1:
                passing = rows[qualifies[0] & (view.min_channels[rows] <= 1)]
            else:
                counts = qualifies.sum(axis=0, dtype=np.int32)
                passing = rows[counts >= view.min_channels[rows]]
            if passing.shape[0]:
                out.append((event.position, view.user_ids[passing]))
        return out
