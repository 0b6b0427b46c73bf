"""Deciding token events against users' filters: a reference rule and a vectorized shard.

`decide_one` is the rule written plainly, one user at a time; it is the specification.
`ShardColumns` holds many users' thresholds column-wise so one event is decided for all
of them in a handful of numpy operations; tests hold it equal to `decide_one`.

Rules: a calling channel *qualifies* for a user when it is rated, its win rate and
average gain reach the user's minimums and its call is no older than the user's
lookback. An event passes when at least `min_channels` channels qualify, its FDV lies
within [fdv_min, fdv_max], its chain is allowed, the user is not paused and (in a
shard) has an active subscription.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from messages.filters import ChannelStats, FilterSettings, normalize_chain

__all__ = ["EventFacts", "ShardColumns", "chain_key", "decide_one"]

_ALL_CHAINS: Final = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
_OTHER_BIT: Final = np.uint64(1 << 63)
_MAX_CHAIN_BITS: Final = 63

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


def chain_key(chain: str) -> str:
    """The canonical chain id for an event's chain (aliases folded, case ignored)."""
    return normalize_chain(chain) or chain.strip().lower()


class EventFacts:
    """What the filters need to know about one token event.

    One row per calling channel (a channel that called twice appears once, with its
    most recent call). Arrays are read-only so a shard can share them safely.
    """

    __slots__ = (
        "age_seconds",
        "avg_gain",
        "chain",
        "channel_id",
        "fdv",
        "rated",
        "rated_columns",
        "rated_rows",
        "win_rate",
    )

    chain: str
    fdv: float
    channel_id: I64
    win_rate: F64
    avg_gain: F64
    rated: B
    age_seconds: F64
    rated_columns: tuple[F64, F64, F64]
    """win_rate, avg_gain, age_seconds of the rated channels as (R, 1) columns, for shards."""
    rated_rows: tuple[tuple[float, float, float], ...]
    """(win_rate, avg_gain, age_seconds) of the rated channels, as plain floats."""

    def __init__(
        self,
        chain: str,
        fdv: float,
        channel_id: Iterable[int] | I64,
        win_rate: Iterable[float] | F64,
        avg_gain: Iterable[float] | F64,
        rated: Iterable[bool] | B,
        age_seconds: Iterable[float] | F64,
    ) -> None:
        self.chain = chain_key(chain)
        self.fdv = float(fdv)
        self.channel_id = _frozen(np.asarray(list(channel_id), dtype=np.int64))
        self.win_rate = _frozen(np.asarray(list(win_rate), dtype=np.float64))
        self.avg_gain = _frozen(np.asarray(list(avg_gain), dtype=np.float64))
        self.rated = _frozen(np.asarray(list(rated), dtype=np.bool_))
        self.age_seconds = _frozen(np.asarray(list(age_seconds), dtype=np.float64))
        n = self.channel_id.shape[0]
        for arr in (self.win_rate, self.avg_gain, self.rated, self.age_seconds):
            if arr.shape != (n,):
                raise ValueError("every per-channel array must have one row per channel")
        rated_now = self.rated
        self.rated_columns = (
            _frozen(self.win_rate[rated_now][:, None]),
            _frozen(self.avg_gain[rated_now][:, None]),
            _frozen(self.age_seconds[rated_now][:, None]),
        )
        self.rated_rows = tuple(
            zip(
                self.win_rate[rated_now].tolist(),
                self.avg_gain[rated_now].tolist(),
                self.age_seconds[rated_now].tolist(),
                strict=True,
            )
        )

    @classmethod
    def from_calls(
        cls,
        chain: str,
        fdv: float,
        calls: Iterable[tuple[int, float]],
        stats: Mapping[int, ChannelStats],
        now: float,
    ) -> EventFacts:
        """Facts from (channel_id, called_at) pairs and the channel statistics.

        A channel without statistics counts as unrated. Repeated calls by one channel
        keep the most recent.
        """
        latest: dict[int, float] = {}
        for channel_id, called_at in calls:
            previous = latest.get(channel_id)
            if previous is None or called_at > previous:
                latest[channel_id] = called_at
        ids = list(latest)
        wr, ag, rated, age = [], [], [], []
        for channel_id in ids:
            st = stats.get(channel_id)
            wr.append(st.win_rate if st else 0.0)
            ag.append(st.avg_gain if st else 0.0)
            rated.append(bool(st and st.rated))
            age.append(now - latest[channel_id])
        return cls(chain, fdv, ids, wr, ag, rated, age)

    def __len__(self) -> int:
        return int(self.channel_id.shape[0])

    def __repr__(self) -> str:
        return f"EventFacts(chain={self.chain!r}, fdv={self.fdv!r}, channels={len(self)})"


_A = TypeVar("_A", bound="np.ndarray[Any, Any]")


def _frozen(arr: _A) -> _A:
    arr.flags.writeable = False
    return arr


def decide_one(settings: FilterSettings, facts: EventFacts, active: bool = True) -> bool:
    """The reference decision for one user: the rules exactly as the module docs state them."""
    if not active or settings.paused:
        return False
    if settings.chains and facts.chain not in settings.chains:
        return False
    if not settings.fdv_min <= facts.fdv:
        return False
    if settings.fdv_max is not None and not facts.fdv <= settings.fdv_max:
        return False
    need = settings.min_channels
    min_wr, min_ag, lookback = settings.min_win_rate, settings.min_avg_gain, settings.lookback
    qualifying = 0
    for win_rate, avg_gain, age in facts.rated_rows:
        if win_rate >= min_wr and avg_gain >= min_ag and age <= lookback:
            qualifying += 1
            if qualifying >= need:
                return True
    return False


class ShardColumns:
    """Many users' thresholds, one numpy column per field, rows packed densely.

    Rows are kept contiguous (removal swaps the last row in), so `decide` works on plain
    slices. New users start inactive: only a subscription makes them eligible.
    """

    _COLUMNS: Final = (
        ("user_ids", np.int64),
        ("min_win_rate", np.float64),
        ("min_avg_gain", np.float64),
        ("fdv_min", np.float64),
        ("fdv_max", np.float64),
        ("chain_mask", np.uint64),
        ("min_channels", np.int64),
        ("lookback", np.float64),
        ("paused", np.bool_),
        ("active", np.bool_),
        ("enabled", np.bool_),
    )

    user_ids: I64
    min_win_rate: F64
    min_avg_gain: F64
    fdv_min: F64
    fdv_max: F64
    chain_mask: npt.NDArray[np.uint64]
    min_channels: I64
    lookback: F64
    paused: B
    active: B
    enabled: B
    """active and not paused, kept up to date so `decide` starts from one column."""

    def __init__(self, capacity: int = 64) -> None:
        self._n = 0
        self._row: dict[int, int] = {}
        self._chain_bits: dict[str, np.uint64] = {}
        capacity = max(1, capacity)
        for name, dtype in self._COLUMNS:
            setattr(self, name, np.zeros(capacity, dtype=dtype))

    def __len__(self) -> int:
        return self._n

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._row

    def user_list(self) -> list[int]:
        return [int(u) for u in self.user_ids[: self._n]]

    def _grow(self) -> None:
        capacity = 2 * self.user_ids.shape[0]
        for name, _ in self._COLUMNS:
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)

    def _chain_bit(self, chain: str, assign: bool) -> np.uint64:
        bit = self._chain_bits.get(chain)
        if bit is None:
            if not assign:
                return _OTHER_BIT
            if len(self._chain_bits) >= _MAX_CHAIN_BITS:
                raise ValueError(f"more than {_MAX_CHAIN_BITS} distinct chains in one shard")
            bit = np.uint64(1 << len(self._chain_bits))
            self._chain_bits[chain] = bit
        return bit

    def _mask(self, chains: frozenset[str]) -> np.uint64:
        if not chains:
            return _ALL_CHAINS
        mask = np.uint64(0)
        for chain in chains:
            mask |= self._chain_bit(chain, assign=True)
        return mask

    def upsert(self, user_id: int, settings: FilterSettings, *, active: bool | None = None) -> None:
        """Insert or overwrite a user's row; `active` None keeps the current flag (new: False)."""
        mask = self._mask(settings.chains)
        row = self._row.get(user_id)
        if row is None:
            if self._n == self.user_ids.shape[0]:
                self._grow()
            row = self._n
            self._n += 1
            self._row[user_id] = row
            self.user_ids[row] = user_id
            self.active[row] = False
        self.min_win_rate[row] = settings.min_win_rate
        self.min_avg_gain[row] = settings.min_avg_gain
        self.fdv_min[row] = settings.fdv_min
        self.fdv_max[row] = math.inf if settings.fdv_max is None else settings.fdv_max
        self.chain_mask[row] = mask
        self.min_channels[row] = settings.min_channels
        self.lookback[row] = settings.lookback
        self.paused[row] = settings.paused
        if active is not None:
            self.active[row] = active
        self.enabled[row] = self.active[row] and not settings.paused

    def remove(self, user_id: int) -> bool:
        """Drop a user's row (the last row moves into its place). False if absent."""
        row = self._row.pop(user_id, None)
        if row is None:
            return False
        last = self._n - 1
        if row != last:
            for name, _ in self._COLUMNS:
                col = getattr(self, name)
                col[row] = col[last]
            self._row[int(self.user_ids[row])] = row
        self._n = last
        return True

    def set_active(self, user_id: int, active: bool) -> bool:
        """Mark a user's subscription active or not. False if the user is not in the shard."""
        row = self._row.get(user_id)
        if row is None:
            return False
        self.active[row] = active
        self.enabled[row] = active and not self.paused[row]
        return True

    def set_paused(self, user_id: int, paused: bool) -> bool:
        row = self._row.get(user_id)
        if row is None:
            return False
        self.paused[row] = paused
        self.enabled[row] = self.active[row] and not paused
        return True

    def decide(self, facts: EventFacts) -> I64:
        """User ids (in row order) for whom the event passes."""
        n = self._n
        wr, ag, age = facts.rated_columns
        if n == 0 or wr.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        bit = self._chain_bit(facts.chain, assign=False)
        fdv = facts.fdv
        eligible = self.enabled[:n] & ((self.chain_mask[:n] & bit) != 0)
        eligible &= self.fdv_min[:n] <= fdv
        eligible &= self.fdv_max[:n] >= fdv
        rows = eligible.nonzero()[0]
        if rows.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        # Gathering the few eligible rows beats comparing every row when most are out.
        gather = rows.shape[0] * 2 < n
        sel: slice | I64 = rows if gather else slice(0, n)
        # channels x users, summed over the channel axis: numpy reduces the outer axis of a
        # C x U matrix an order of magnitude faster than the inner axis of U x C.
        qualifies = wr >= self.min_win_rate[sel][None, :]
        qualifies &= ag >= self.min_avg_gain[sel][None, :]
        qualifies &= age <= self.lookback[sel][None, :]
        counts = qualifies.sum(axis=0, dtype=np.int32)
        passing = counts >= self.min_channels[sel]
        chosen: I64 = rows[passing] if gather else (passing & eligible).nonzero()[0]
        result: I64 = self.user_ids[chosen]
        return result
