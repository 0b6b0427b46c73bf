"""Messages between the user actors and the multiplier index."""

from __future__ import annotations

import msgspec


class Track(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Follow ``token_key`` for ``user_id`` from the FDV at which they were notified
    (scalars only: nothing for the cyclic garbage collector to walk)."""

    token_key: str
    user_id: int
    fdv_at_notify: float
    symbol: str = ""
    chain: str = ""


class TrackMany(msgspec.Struct, frozen=True):
    """Several `Track` requests in one hop (from the notify gate's batches)."""

    items: tuple[Track, ...]


class Untrack(msgspec.Struct, frozen=True):
    token_key: str
    user_id: int


class TrackedBy(msgspec.Struct, frozen=True):
    """Ask: which tokens does this user follow (for /tracked)?"""

    user_id: int


class MultiplierAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A tracked token crossed one or more thresholds; ``threshold`` is the highest new one."""

    user_id: int
    token_key: str
    threshold: float
    multiple: float
    fdv_at_notify: float
    fdv_now: float
    symbol: str = ""
