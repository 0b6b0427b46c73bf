"""The application tree, declared as data.

Read top to bottom, this is callwatch: which actors run, under which supervisors, with
which settings. The root is ``rest_for_one`` in dependency order, so the store starts
first and the feed last; on shutdown the feed stops first and the store last, and a
crashed store restarts everything that depends on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.control import Control
from actors.store.handle import StoreHandle
from messages.settings import Settings
from supervisors import Backoff, ChildSpec, Strategy, supervisor


@dataclass
class Environment:
    """What the tree needs from outside: live handles and where the peers are."""

    store: StoreHandle
    telegram_base_url: str = ""
    feed_url: str = ""
    on_control_bound: Callable[[str], None] | None = None
    extra_probes: Mapping[str, Callable[[], Awaitable[bool]]] = field(default_factory=dict)


def backoff(settings: Settings) -> Backoff:
    sup = settings.supervision
    return Backoff(
        initial=sup.backoff_initial,
        maximum=sup.backoff_max,
        reset_after=sup.backoff_reset_after,
    )


def store_tree(settings: Settings, env: Environment) -> ChildSpec:
    from actors.store.tree import store_subtree

    return store_subtree(env.store, settings.store, backoff=backoff(settings))


def control(settings: Settings, env: Environment) -> ChildSpec:
    store = env.store

    async def redis_ready() -> bool:
        return store.redis_up

    async def postgres_ready() -> bool:
        return store.postgres_up

    probes: dict[str, Callable[[], Awaitable[bool]]] = {
        "redis": redis_ready,
        "postgres": postgres_ready,
        **env.extra_probes,
    }
    args: dict[str, Any] = {
        "host": settings.control.host,
        "port": settings.control.port,
        "token": settings.control.token,
        "probes": probes,
        "on_bound": env.on_control_bound,
    }
    return ChildSpec(name="control", actor=Control, args=args)


def build_tree(settings: Settings, env: Environment) -> ChildSpec:
    """The whole application, root first."""
    sup = settings.supervision
    return supervisor(
        "root",
        [
            store_tree(settings, env),
            control(settings, env),
        ],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=sup.max_restarts,
        period=sup.period,
        backoff=backoff(settings),
    )
