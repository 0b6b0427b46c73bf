"""The ``store`` subtree: Redis owner, PostgreSQL owner, outbox writer, ``one_for_one``.

The owners' restarts are the reconnect logic, so the subtree must ride out an outage of any
length: its restart intensity is derived from the backoff so that the fastest possible crash
loop of all three children never exceeds it. Giving up would not bring a server back; it
would only make the root restart everything that depends on the store. (The health actor
alerts when a server stays unreachable.)
"""

from __future__ import annotations

import math
from dataclasses import replace

from actors.store.handle import StoreHandle
from actors.store.outbox import OutboxCounters, OutboxWriter
from actors.store.postgres_owner import MIGRATION_TIMEOUT_S, PostgresOwner
from actors.store.redis_owner import RedisOwner
from messages.settings import StoreSettings
from supervisors import Backoff, ChildSpec, Strategy, supervisor, worker

__all__ = ["INTENSITY_PERIOD_S", "store_backoff", "store_intensity", "store_subtree"]

INTENSITY_PERIOD_S = 10.0
_MIN_DELAY_S = 0.001
_MAX_RESTARTS_CAP = 1_000_000


def store_backoff(settings: StoreSettings) -> Backoff:
    """Small delays: a server that returns is picked up within about ``backoff_max``."""
    maximum = settings.backoff_max
    return Backoff(
        initial=min(settings.backoff_initial, maximum),
        maximum=maximum,
        jitter=0.2,
        reset_after=30.0,
    )


def store_intensity(
    backoff: Backoff, children: int, period: float = INTENSITY_PERIOD_S
) -> tuple[int, float]:
    """(max_restarts, period) that a crash loop paced by ``backoff`` never exceeds.

    Counts, per child, how many restarts fit in ``period`` when every delay is as short
    as the jitter allows, and adds one spare per child.
    """
    per_child = 0
    elapsed = 0.0
    attempt = 0
    while per_child < _MAX_RESTARTS_CAP:
        base = min(
            backoff.maximum, backoff.initial * math.pow(backoff.multiplier, min(attempt, 64))
        )
        elapsed += max(_MIN_DELAY_S, base * (1.0 - backoff.jitter))
        if elapsed > period:
            break
        per_child += 1
        attempt += 1
    return min(_MAX_RESTARTS_CAP, children * (per_child + 1)), period


def store_subtree(
    handle: StoreHandle,
    settings: StoreSettings,
    *,
    backoff: Backoff | None = None,
    name: str = "store",
    counters: OutboxCounters | None = None,
) -> ChildSpec:
    """The child spec of the ``store`` supervisor (children ``redis``, ``postgres``, ``outbox``).

    ``backoff`` defaults to :func:`store_backoff` (``StoreSettings.backoff_*``). A long
    maximum here directly delays reconnection after a server returns.
    """
    chosen = backoff if backoff is not None else store_backoff(settings)
    children = [
        worker("redis", RedisOwner, shutdown=3.0, store=handle, settings=settings),
        # Migrations run in started(): give them their own time limit, not the default 30 s.
        ChildSpec(
            name="postgres",
            actor=PostgresOwner,
            args={"store": handle, "settings": settings},
            shutdown=settings.call_timeout + 3.0,
            start_timeout=MIGRATION_TIMEOUT_S + 4 * settings.call_timeout,
        ),
        worker(
            "outbox",
            OutboxWriter,
            shutdown=3.0,
            store=handle,
            settings=settings,
            counters=counters if counters is not None else OutboxCounters(),
        ),
    ]
    max_restarts, period = store_intensity(chosen, len(children))
    spec = supervisor(
        name,
        children,
        strategy=Strategy.ONE_FOR_ONE,
        max_restarts=max_restarts,
        period=period,
        backoff=chosen,
    )
    # Its start includes the migrations too.
    return replace(spec, start_timeout=children[1].start_timeout + 30.0)
