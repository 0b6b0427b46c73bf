"""The application tree, declared as data.

Read top to bottom, this is callwatch: which actors run, under which supervisors, with
which settings. The root is ``rest_for_one`` in dependency order, so the store starts
first and the feed last; on shutdown the feed stops first and the store last, and a
crashed store restarts everything that depends on it.

Parts that reconnect to something outside (the feed, Telegram, the Solana node) sit
under supervisors of their own, so an outage that makes them restart for a while spends
their supervisor's restart budget, not the root's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.admin import AdminActor, AdminGateway
from actors.bot import TelegramBot
from actors.channel_stats import ChannelStatsActor
from actors.charts import ChartRenderer
from actors.control import Control
from actors.health import Health, HealthBoard
from actors.ingest import Ingest, ingest_mailbox
from actors.multipliers import Multipliers
from actors.payments import payments_tree
from actors.reports import Reports
from actors.sender import Sender
from actors.store.handle import StoreHandle
from actors.store.tree import store_subtree
from actors.user_directory import users_branch
from messages.settings import Settings
from runtime.island import ThreadIsland
from supervisors import Backoff, ChildSpec, Strategy, supervisor, worker

Probe = Callable[[], Awaitable[bool]]


@dataclass
class Environment:
    """What the tree needs from outside: live handles and hooks for the host process."""

    store: StoreHandle
    on_control_bound: Callable[[str], None] | None = None
    on_ipn_bound: Callable[[str], None] | None = None
    extra_probes: Mapping[str, Probe] = field(default_factory=dict)
    health: HealthBoard = field(default_factory=HealthBoard)
    admin: AdminGateway = field(default_factory=AdminGateway)
    """Refs do not exist while the tree is declared: the admin actor binds itself here."""


def backoff(settings: Settings) -> Backoff:
    sup = settings.supervision
    return Backoff(
        initial=sup.backoff_initial, maximum=sup.backoff_max, reset_after=sup.backoff_reset_after
    )


def outside(name: str, child: ChildSpec) -> ChildSpec:
    """A supervisor of its own for a child that talks to the outside world."""
    return supervisor(
        name,
        [child],
        max_restarts=60,
        period=60.0,
        backoff=Backoff(initial=0.5, maximum=10.0, reset_after=60.0),
    )


def channel_stats(settings: Settings, env: Environment) -> ChildSpec:
    return worker("channel-stats", ChannelStatsActor, store=env.store, config=settings.filters)


def multipliers(settings: Settings, env: Environment) -> ChildSpec:
    m = settings.multipliers
    child = worker(
        "multipliers",
        Multipliers,
        shutdown=10.0,
        store=env.store,
        thresholds=m.thresholds,
        entry_ttl_days=m.entry_ttl_days,
    )
    return supervisor(
        "multipliers-sup",
        [child],
        max_restarts=30,
        period=60.0,
        backoff=Backoff(initial=0.2, maximum=5.0, reset_after=30.0),
    )


def sender(settings: Settings, env: Environment) -> ChildSpec:
    base = settings.telegram.api_base_url
    child = worker(
        "sender",
        Sender,
        shutdown=10.0,
        store=env.store,
        settings=settings.sender,
        telegram=settings.telegram,
        base_url=base,
    )
    return outside("sender-sup", child)


def payments(settings: Settings, env: Environment) -> ChildSpec:
    return payments_tree(
        env.store, settings.payments, backoff=backoff(settings), on_ipn_bound=env.on_ipn_bound
    )


def reports(settings: Settings, env: Environment) -> ChildSpec:
    return supervisor(
        "reports-sup",
        [
            worker("charts", ThreadIsland, worker=ChartRenderer),
            worker("reports", Reports, store=env.store, settings=settings.reports),
        ],
        max_restarts=10,
        period=60.0,
    )


def bot(settings: Settings, env: Environment) -> ChildSpec:
    child = worker(
        "bot",
        TelegramBot,
        shutdown=10.0,
        telegram=settings.telegram,
        base_url=settings.telegram.api_base_url,
        store=env.store,
    )
    return outside("bot-sup", child)


def admin(settings: Settings, env: Environment) -> ChildSpec:
    return worker(
        "admin",
        AdminActor,
        store=env.store,
        admin_chat_ids=settings.telegram.admin_chat_ids,
        gateway=env.admin,
        history_stream=settings.store.outbox_stream,
    )


def health(settings: Settings, env: Environment) -> ChildSpec:
    return worker(
        "health",
        Health,
        settings=settings.health,
        admin_chat_ids=settings.telegram.admin_chat_ids,
        store=env.store,
        board=env.health,
    )


def control(settings: Settings, env: Environment) -> ChildSpec:
    store = env.store

    async def redis_ready() -> bool:
        return store.redis_up

    async def postgres_ready() -> bool:
        return store.postgres_up

    probes: dict[str, Probe] = {"redis": redis_ready, "postgres": postgres_ready}
    probes.update(env.extra_probes)
    args: dict[str, Any] = {
        "host": settings.control.host,
        "port": settings.control.port,
        "token": settings.control.token,
        "probes": probes,
        "ready_actors": {"feed": "ingest", "telegram": "bot"},
        "admin": env.admin.handle,
        "health": env.health.view,
        "on_bound": env.on_control_bound,
    }
    return ChildSpec(name="control", actor=Control, args=args)


def ingest(settings: Settings, env: Environment) -> ChildSpec:
    child = worker(
        "ingest",
        Ingest,
        mailbox=ingest_mailbox(settings.feed.mailbox),
        store=env.store,
        url=settings.feed.url,
        settings=settings.feed,
        token_targets=("filters",),
        price_targets=("multipliers", "channel-stats"),
    )
    return outside("feed", child)


def build_tree(settings: Settings, env: Environment) -> ChildSpec:
    """The whole application, in start order."""
    sup = settings.supervision
    return supervisor(
        "root",
        [
            store_subtree(env.store, settings.store),
            channel_stats(settings, env),
            multipliers(settings, env),
            sender(settings, env),
            users_branch(env.store, settings.filters, history_stream=settings.store.outbox_stream),
            payments(settings, env),
            reports(settings, env),
            bot(settings, env),
            admin(settings, env),
            health(settings, env),
            control(settings, env),
            ingest(settings, env),
        ],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=sup.max_restarts,
        period=sup.period,
        backoff=backoff(settings),
    )
