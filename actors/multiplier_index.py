"""Which users were told about which token, at what FDV, and which multiple they last heard.

The index must hold millions of (token, user) entries and take hundreds of thousands of
price updates per second, so it keeps no Python object per entry: each token owns a few
contiguous numpy columns (user, FDV at notify, notified at, highest threshold index
sent, and the FDV that would trigger that user's next alert) that double when full.
Each token also keeps the minimum of those trigger FDVs, so a price that crosses
nothing costs a dict lookup and one comparison, and an untracked token costs one dict
miss.

Crossing several thresholds at once yields one alert naming the highest. What was sent
is recorded in place before the alert is returned, so it is never sent twice; the
per-token blob (`encode_token` / `load_token`) carries that record through restarts.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from itertools import pairwise
from typing import Any, Final, NamedTuple, TypeGuard

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Alert",
    "BlobError",
    "Entry",
    "LoadReport",
    "MultiplierIndex",
]

DEFAULT_THRESHOLDS: Final[tuple[float, ...]] = (2, 5, 10, 20, 50, 100)
SEVEN_DAYS: Final = 7 * 24 * 3600.0

# Blob: magic+version, threshold count (u8), thresholds (f8 each), entry count (u32), then
# packed 25-byte records. Records (not columns) so that a rebuild can join every blob's
# records and read them as one array.
_MAGIC: Final = b"CWM\x03"
_RECORD: Final = np.dtype([("user", "<i8"), ("fdv", "<f8"), ("at", "<f8"), ("level", "i1")])
_GOLDEN: Final = np.uint64(0x9E37_79B9_7F4A_7C15)
_HEAD: Final = struct.Struct("<4sB")
_COUNT: Final = struct.Struct("<I")
_INITIAL_CAPACITY: Final = 4
_BAD_LEVEL: Final = -2  # marks a corrupt stored level; such rows are dropped on load
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1

_I64 = npt.NDArray[np.int64]
_F64 = npt.NDArray[np.float64]
_I8 = npt.NDArray[np.int8]


class Alert(NamedTuple):
    """A token reached `threshold` x (the highest newly crossed) of what the user was told."""

    user_id: int
    token_key: str
    threshold: float
    multiple: float
    fdv_at_notify: float


class Entry(NamedTuple):
    """One tracked user of a token; `highest_index` -1 means no alert sent yet."""

    user_id: int
    fdv_at_notify: float
    highest_index: int
    notified_at: float


class BlobError(ValueError):
    """A stored token blob could not be read; the reason says why."""


class _Token:
    """Columns for one token's entries; rows [0, n) are live."""

    __slots__ = ("at", "fdv", "level", "n", "next_alert", "target", "users")

    users: _I64
    fdv: _F64
    at: _F64
    level: _I8
    target: _F64
    n: int
    next_alert: float

    def __init__(self, users: _I64, fdv: _F64, at: _F64, level: _I8, target: _F64) -> None:
        self.users = users
        self.fdv = fdv
        self.at = at
        self.level = level
        self.target = target
        self.n = int(users.shape[0])
        self.next_alert = _min(target, self.n)

    @classmethod
    def empty(cls, capacity: int) -> _Token:
        tok = cls(
            np.zeros(capacity, np.int64),
            np.zeros(capacity, np.float64),
            np.zeros(capacity, np.float64),
            np.zeros(capacity, np.int8),
            np.full(capacity, math.inf),
        )
        tok.n = 0
        tok.next_alert = math.inf
        return tok

    def resize(self, capacity: int) -> None:
        n = self.n
        for name in ("users", "fdv", "at", "level", "target"):
            old = getattr(self, name)
            new = np.empty(capacity, dtype=old.dtype)
            new[:n] = old[:n]
            setattr(self, name, new)

    def move(self, src: int, dst: int) -> None:
        self.users[dst] = self.users[src]
        self.fdv[dst] = self.fdv[src]
        self.at[dst] = self.at[src]
        self.level[dst] = self.level[src]
        self.target[dst] = self.target[src]

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        n = self.n
        self.users = self.users[:n][mask]
        self.fdv = self.fdv[:n][mask]
        self.at = self.at[:n][mask]
        self.level = self.level[:n][mask]
        self.target = self.target[:n][mask]
        self.n = self.users.shape[0]


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid_fdv(value: object) -> bool:
    return _number(value) and 0 < value < math.inf


def _valid_time(value: object) -> bool:
    return _number(value) and math.isfinite(value)


class MultiplierIndex:
    """token_key -> tracked users, with O(1) price updates that cross nothing."""

    def __init__(self, thresholds: Iterable[float] = DEFAULT_THRESHOLDS) -> None:
        values = tuple(float(t) for t in thresholds)
        if not values or len(values) > 127:
            raise ValueError("between 1 and 127 thresholds are needed")
        if any(not (1.0 < t < math.inf) for t in values):
            raise ValueError("thresholds must be finite multiples above 1")
        if any(b <= a for a, b in pairwise(values)):
            raise ValueError("thresholds must be strictly increasing")
        self._thresholds = values
        self._thr = np.asarray(values, dtype=np.float64)
        # next_thr[level + 1] is the multiple that triggers the next alert; inf after the top.
        self._next_thr = np.append(self._thr, math.inf)
        self._next_thr_list = (*values, math.inf)
        self._top = len(values) - 1
        self._blob_head = _HEAD.pack(_MAGIC, len(values)) + self._thr.astype("<f8").tobytes()
        self._tokens: dict[str, _Token] = {}
        self._dirty: set[str] = set()
        self._size = 0

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self._thresholds

    def __len__(self) -> int:
        return self._size

    def __contains__(self, token_key: object) -> bool:
        return token_key in self._tokens

    def tokens(self) -> list[str]:
        return list(self._tokens)

    def token_count(self) -> int:
        return len(self._tokens)

    def entries_for(self, token_key: str) -> list[Entry]:
        tok = self._tokens.get(token_key)
        if tok is None:
            return []
        n = tok.n
        return [
            Entry(u, f, lv, at)
            for u, f, lv, at in zip(
                tok.users[:n].tolist(),
                tok.fdv[:n].tolist(),
                tok.level[:n].tolist(),
                tok.at[:n].tolist(),
                strict=True,
            )
        ]

    def is_tracked(self, token_key: str, user_id: int) -> bool:
        tok = self._tokens.get(token_key)
        return tok is not None and _row_of(tok, user_id) >= 0

    def newest_notified_at(self, token_key: str) -> float | None:
        """When the token's most recent entry was made: a store derives the key's TTL from it."""
        tok = self._tokens.get(token_key)
        return None if tok is None else float(tok.at[: tok.n].max())

    def nbytes(self) -> int:
        """Bytes held by the entry columns (capacity included), for metrics."""
        return sum(
            t.users.nbytes + t.fdv.nbytes + t.at.nbytes + t.level.nbytes + t.target.nbytes
            for t in self._tokens.values()
        )

    # -- changes -------------------------------------------------------------------------

    def track(self, token_key: str, user_id: int, fdv_at_notify: float, now: float) -> bool:
        """Follow `token_key` for `user_id` from `fdv_at_notify`. False if already tracked
        or the input is unusable (non-positive or non-finite FDV or time)."""
        if not _valid_fdv(fdv_at_notify) or not _valid_time(now):
            return False
        if not isinstance(user_id, int) or not _I64_MIN <= user_id <= _I64_MAX:
            return False
        tok = self._tokens.get(token_key)
        if tok is None:
            tok = _Token.empty(_INITIAL_CAPACITY)
            self._tokens[token_key] = tok
        elif _row_of(tok, user_id) >= 0:
            return False
        row = tok.n
        if row == tok.users.shape[0]:
            tok.resize(2 * row)
        fdv = float(fdv_at_notify)
        first = fdv * self._thresholds[0]
        tok.users[row] = user_id
        tok.fdv[row] = fdv
        tok.at[row] = now
        tok.level[row] = -1
        tok.target[row] = first
        tok.n = row + 1
        if first < tok.next_alert:
            tok.next_alert = first
        self._size += 1
        self._dirty.add(token_key)
        return True

    def untrack(self, token_key: str, user_id: int) -> bool:
        tok = self._tokens.get(token_key)
        if tok is None:
            return False
        row = _row_of(tok, user_id)
        if row < 0:
            return False
        last = tok.n - 1
        if row != last:
            tok.move(last, row)
        tok.n = last
        self._size -= 1
        self._dirty.add(token_key)
        if last == 0:
            del self._tokens[token_key]
        else:
            tok.next_alert = _min(tok.target, last)
        return True

    def untrack_token(self, token_key: str) -> int:
        """Forget a token entirely; the number of entries dropped."""
        tok = self._tokens.pop(token_key, None)
        if tok is None:
            return 0
        self._size -= tok.n
        self._dirty.add(token_key)
        return tok.n

    def on_price(self, token_key: str, fdv: float) -> list[Alert]:
        """Alerts for every user whose multiple of FDV-at-notify newly crossed a threshold."""
        tok = self._tokens.get(token_key)
        if tok is None:
            return []
        try:
            if not fdv >= tok.next_alert:
                return []
        except TypeError:
            return []
        return self._cross(token_key, tok, fdv)

    def on_prices(self, updates: Iterable[tuple[str, float]]) -> list[Alert]:
        """`on_price` for a batch (for example a coalesced mailbox drain)."""
        alerts: list[Alert] = []
        get = self._tokens.get
        for token_key, fdv in updates:
            tok = get(token_key)
            if tok is None:
                continue
            try:
                if not fdv >= tok.next_alert:
                    continue
            except TypeError:
                continue
            alerts.extend(self._cross(token_key, tok, fdv))
        return alerts

    def _cross(self, token_key: str, tok: _Token, fdv: Any) -> list[Alert]:
        try:
            price = float(fdv)
        except (TypeError, ValueError, OverflowError):
            return []
        if not 0 < price < math.inf:
            return []
        n = tok.n
        target = tok.target
        rows = (target[:n] <= price).nonzero()[0].tolist()
        fdv_col, level_col, users = tok.fdv, tok.level, tok.users
        thr, steps, top = self._thresholds, self._next_thr_list, self._top
        alerts: list[Alert] = []
        for row in rows:
            # Usually one or two rows and one threshold each: plain floats beat numpy here,
            # and b * thr is the very product stored in `target`, so both paths agree.
            base = float(fdv_col[row])
            level = int(level_col[row])
            while level < top and base * thr[level + 1] <= price:
                level += 1
            level_col[row] = level
            target[row] = base * steps[level + 1]
            alerts.append(Alert(int(users[row]), token_key, thr[level], price / base, base))
        tok.next_alert = _min(target, n)
        if alerts:
            self._dirty.add(token_key)
        return alerts

    def expire(self, now: float, max_age: float = SEVEN_DAYS) -> int:
        """Drop entries notified more than `max_age` ago; the number dropped."""
        if not _valid_time(now) or not _number(max_age):
            return 0
        cutoff = now - max_age
        dropped = 0
        for token_key in list(self._tokens):
            tok = self._tokens[token_key]
            keep = tok.at[: tok.n] >= cutoff
            kept = int(np.count_nonzero(keep))
            if kept == tok.n:
                continue
            dropped += tok.n - kept
            self._dirty.add(token_key)
            if kept == 0:
                del self._tokens[token_key]
                continue
            tok.keep(keep)
            tok.next_alert = _min(tok.target, tok.n)
        self._size -= dropped
        return dropped

    # -- persistence ---------------------------------------------------------------------

    def dirty_tokens(self) -> set[str]:
        """Tokens changed since `clear_dirty` (encode each; an empty blob means delete it)."""
        return set(self._dirty)

    def clear_dirty(self) -> None:
        self._dirty.clear()

    def take_dirty(self) -> set[str]:
        """`dirty_tokens` and `clear_dirty` in one step."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def encode_token(self, token_key: str) -> bytes:
        """One compact value for a token (25 bytes per entry plus a small header).

        An untracked token encodes to b"" (the store should delete its key).
        """
        tok = self._tokens.get(token_key)
        if tok is None:
            return b""
        n = tok.n
        rec = np.empty(n, dtype=_RECORD)
        rec["user"] = tok.users[:n]
        rec["fdv"] = tok.fdv[:n]
        rec["at"] = tok.at[:n]
        rec["level"] = tok.level[:n]
        return b"".join((self._blob_head, _COUNT.pack(n), rec.tobytes()))

    def iter_blobs(self) -> Iterator[tuple[str, bytes]]:
        """Every token with its blob, for a full snapshot."""
        for token_key in list(self._tokens):
            yield token_key, self.encode_token(token_key)

    def load_token(self, token_key: str, blob: bytes) -> int:
        """Replace a token's entries from `encode_token` output; the number loaded.

        An empty blob removes the token. A malformed blob raises `BlobError` and leaves
        the index unchanged. See `load_tokens` for what is repaired on the way in.
        """
        report = self.load_tokens(((token_key, blob),))
        if token_key in report.rejected:
            raise BlobError(report.rejected[token_key])
        return report.entries

    def load_tokens(self, items: Iterable[tuple[str, bytes]]) -> LoadReport:
        """Replace many tokens' entries from their blobs in one vectorized pass (the rebuild).

        Blobs written under other thresholds are mapped by threshold value, so nothing
        already sent is sent again. Rows with unusable values and repeated users are
        dropped (counted in `dropped`); malformed blobs are skipped and reported with a
        reason; an empty blob removes its token. Later items win over earlier ones.
        """
        latest: dict[str, bytes] = {}
        for token_key, blob in items:
            latest[token_key] = blob
        keys: list[str] = []
        parts: list[memoryview] = []
        counts: list[int] = []
        limits: list[int] = []
        remaps: list[tuple[int, npt.NDArray[np.float64]]] = []
        rejected: dict[str, str] = {}
        for token_key, blob in latest.items():
            try:
                parsed = self._parse(blob)
            except BlobError as exc:
                rejected[token_key] = str(exc)
                continue
            old = self._tokens.pop(token_key, None)
            if old is not None:
                self._size -= old.n
            if parsed is None:
                continue
            records, n_thr, old_thr = parsed
            if old_thr is not None:
                remaps.append((len(keys), old_thr))
            keys.append(token_key)
            parts.append(records)
            counts.append(len(records) // _RECORD.itemsize)
            limits.append(n_thr)
        if not keys:
            return LoadReport(0, 0, 0, rejected)
        rec = np.frombuffer(b"".join(parts), dtype=_RECORD)
        users: _I64 = rec["user"].astype(np.int64)
        fdv: _F64 = rec["fdv"].astype(np.float64)
        at: _F64 = rec["at"].astype(np.float64)
        level: _I8 = rec["level"].astype(np.int8)
        del rec
        owner = np.repeat(np.arange(len(keys)), counts)
        good = (fdv > 0) & (fdv < math.inf) & np.isfinite(at) & (level >= -1)
        good &= level < np.repeat(np.asarray(limits), counts)
        if remaps:
            bounds = np.cumsum([0, *counts]).tolist()
            for i, old_thr in remaps:
                seg = level[bounds[i] : bounds[i + 1]]
                sent = (seg >= 0) & good[bounds[i] : bounds[i + 1]]
                seg[sent] = np.searchsorted(self._thr, old_thr[seg[sent]], side="right") - 1
        good &= ~_repeats(users, owner)
        total = users.shape[0]
        kept = int(np.count_nonzero(good))
        if kept != total:
            users, fdv, at, level, owner = (
                users[good],
                fdv[good],
                at[good],
                level[good],
                owner[good],
            )
        target = fdv * self._next_thr[level.astype(np.intp) + 1]
        sizes = np.bincount(owner, minlength=len(keys))
        ends = np.cumsum(sizes)
        starts = ends - sizes
        nonempty = sizes > 0
        lows = np.full(len(keys), math.inf)
        if kept:
            # Empty tokens have no rows, so each nonempty start runs exactly to its end.
            lows[nonempty] = np.minimum.reduceat(target, starts[nonempty])
        tokens = self._tokens
        for token_key, a, b, low in zip(
            keys, starts.tolist(), ends.tolist(), lows.tolist(), strict=True
        ):
            if a == b:
                continue
            tok = _Token.__new__(_Token)
            tok.users, tok.fdv, tok.at = users[a:b], fdv[a:b], at[a:b]
            tok.level, tok.target = level[a:b], target[a:b]
            tok.n = b - a
            tok.next_alert = low
            tokens[token_key] = tok
        self._size += kept
        return LoadReport(int(np.count_nonzero(nonempty)), kept, total - kept, rejected)

    def _parse(self, blob: bytes) -> tuple[memoryview, int, npt.NDArray[np.float64] | None] | None:
        """(records, threshold count, other thresholds or None if ours); None if empty."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise BlobError(f"expected bytes, got {type(blob).__name__}")
        view = memoryview(blob).cast("B")
        size = len(view)
        if size == 0:
            return None
        if size < _HEAD.size:
            raise BlobError("blob shorter than its header")
        magic, n_thr = _HEAD.unpack_from(view, 0)
        if magic != _MAGIC:
            raise BlobError("not a multiplier-index blob (bad magic or version)")
        offset = _HEAD.size + 8 * n_thr
        if n_thr == 0 or size < offset + _COUNT.size:
            raise BlobError("blob truncated in its thresholds")
        old_thr = None
        if view[:offset] != self._blob_head:
            old_thr = np.frombuffer(view, "<f8", n_thr, _HEAD.size).astype(np.float64)
            if np.count_nonzero(~np.isfinite(old_thr)):
                raise BlobError("blob thresholds are not finite")
        (n,) = _COUNT.unpack_from(view, offset)
        offset += _COUNT.size
        if size != offset + n * _RECORD.itemsize:
            raise BlobError(f"blob holds {size - offset} record bytes, header promises {n}")
        if n == 0:
            return None
        return view[offset:], n_thr, old_thr


class LoadReport(NamedTuple):
    """What `load_tokens` did: tokens and entries loaded, bad rows dropped, blobs refused."""

    tokens: int
    entries: int
    dropped: int
    rejected: dict[str, str]


def _row_of(tok: _Token, user_id: int) -> int:
    hits = (tok.users[: tok.n] == user_id).nonzero()[0]
    return int(hits[0]) if hits.shape[0] else -1


def _repeats(users: _I64, owner: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
    """Rows repeating an earlier (owner, user) pair.

    A hash of the pair is sorted first (much cheaper than a lexsort of 2.5M pairs);
    only owners whose hashes collide are checked exactly.
    """
    repeated = np.zeros(users.shape[0], dtype=np.bool_)
    key = users.view(np.uint64) ^ (owner.astype(np.uint64) * _GOLDEN)
    ordered = np.sort(key)
    clash = ordered[1:][ordered[1:] == ordered[:-1]]
    if clash.shape[0] == 0:
        return repeated
    for who in np.unique(owner[np.isin(key, clash)]).tolist():
        rows = (owner == who).nonzero()[0]
        first = np.unique(users[rows], return_index=True)[1]
        repeated[rows] = True
        repeated[rows[first]] = False
    return repeated


def _min(values: _F64, n: int) -> float:
    """min of values[:n] (inf when empty); argmin is several times cheaper than min here."""
    if n == 0:
        return math.inf
    live = values[:n]
    return float(live[live.argmin()])
