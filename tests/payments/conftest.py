"""The payments subtree against the real sandbox peers and real PostgreSQL and Redis.

`billing` starts a small tree: a recording "sender", a recording "user:<USER>" actor (to see
`SubscriptionChanged`), and the real payments subtree from `actors.payments.payments_tree`,
on a ManualClock whose wall time starts at the real time (so the Solana stub's block times
line up with order expiries).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from actors.ipn_listener import IPN_PATH
from actors.payments import payments_tree
from actors.store.handle import StoreHandle
from actors.subscriptions import utc
from messages.billing import ListPlans, SubscriptionChanged
from messages.delivery import Outbound
from messages.settings import PaymentsSettings, Secret
from runtime import Actor, ActorSystem, ManualClock, Ref
from sandbox.nowpayments import NowPaymentsStub
from sandbox.solana import SolanaRpcStub
from supervisors import Backoff, Strategy, Tree, supervisor, worker
from tests.helpers import published_store

WALLET = "GsbwXfJraMomNxBcjYLcG3mxkBUiyWXAB32fGbSMQRdW"
PAYER = "5ZWj7a1f8tWkjBESHKgrLmXshuXxqeY9SYcfbshpAqPG"
API_KEY = "sandbox-api-key"
SECRET = "ipn-secret-for-tests"
USER = 4242
OTHER = 777
BACKOFF_S = 0.5


class Recorder(Actor):
    """Keeps every message it is told (the test's "sender" and "user:<id>")."""

    def __init__(self, box: list[Any]) -> None:
        self.box = box

    async def receive(self, message: Any) -> Any:
        self.box.append(message)
        return None


@dataclass
class Billing:
    tree: Tree
    clock: ManualClock
    store: StoreHandle
    pool: asyncpg.Pool
    redis: aioredis.Redis
    solana: SolanaRpcStub
    gateway: NowPaymentsStub
    settings: PaymentsSettings
    sent: list[Outbound] = field(default_factory=list)
    changes: list[SubscriptionChanged] = field(default_factory=list)
    ipn_url: str = ""

    @property
    def payments(self) -> Ref:
        return self.tree.lookup("payments")

    @property
    def poller(self) -> Ref:
        return self.tree.lookup("sol-poller")

    def now(self) -> datetime:
        return utc(self.clock.wall())

    async def ask(self, message: Any) -> Any:
        return await self.payments.ask(message, timeout=10)

    async def settled(self) -> None:
        """Every message told to the payments actor so far has been handled (FIFO mailbox)."""
        await self.payments.ask(ListPlans(), timeout=10)

    async def count(self, sql: str, *args: Any) -> int:
        value = await self.pool.fetchval(sql, *args)
        return int(value)

    def texts(self, kind: str | None = None) -> list[str]:
        return [m.text for m in self.sent if kind is None or m.kind == kind]


def payments_settings(**overrides: Any) -> PaymentsSettings:
    base: dict[str, Any] = {
        "wallet": WALLET,
        "nowpayments_api_key": Secret(API_KEY),
        "ipn_secret": Secret(SECRET),
        "ipn_port": 0,
        # Timers are slow by default: ManualClock.advance wakes a ticker at every period it
        # passes, and tests jump days ahead. Tests of the timers themselves override these.
        "poll_interval_s": 86400.0,
        "sweep_interval_s": 86400.0,
        "order_ttl_s": 1800.0,
        "settle_grace_s": 120.0,
        "http_timeout_s": 3.0,
        "rpc_timeout_s": 3.0,
    }
    return PaymentsSettings(**(base | overrides))


@pytest.fixture
async def store(redis_url: str, database_url: str) -> AsyncIterator[StoreHandle]:
    async with published_store(redis_url, database_url, pool_max=8) as handle:
        yield handle


@pytest.fixture
async def solana() -> AsyncIterator[SolanaRpcStub]:
    async with SolanaRpcStub() as stub:
        yield stub


@pytest.fixture
async def gateway() -> AsyncIterator[NowPaymentsStub]:
    async with NowPaymentsStub(api_key=API_KEY, ipn_secret=SECRET) as stub:
        yield stub


BillingFactory = Callable[..., Awaitable[Billing]]


@pytest.fixture
async def make_billing(
    store: StoreHandle, solana: SolanaRpcStub, gateway: NowPaymentsStub
) -> AsyncIterator[BillingFactory]:
    """Start the test tree with settings overrides; stopped at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> Billing:
            settings = payments_settings(
                solana_rpc_url=solana.url, nowpayments_api_url=gateway.url, **overrides
            )
            clock = ManualClock(wall_start=time.time())
            sent: list[Outbound] = []
            changes: list[SubscriptionChanged] = []
            bound: list[str] = []

            def on_bound(url: str) -> None:
                bound.append(url)
                gateway.default_ipn_callback_url = url + IPN_PATH

            spec = supervisor(
                "root",
                [
                    worker("sender", Recorder, box=sent),
                    worker(f"user:{USER}", Recorder, box=changes),
                    payments_tree(
                        store,
                        settings,
                        backoff=Backoff(initial=BACKOFF_S, maximum=BACKOFF_S, jitter=0.0),
                        on_ipn_bound=on_bound,
                    ),
                ],
                strategy=Strategy.ONE_FOR_ONE,
                max_restarts=50,
                period=60,
            )
            tree = await stack.enter_async_context(Tree(spec, ActorSystem(clock)).running())
            billing = Billing(
                tree=tree,
                clock=clock,
                store=store,
                pool=store.pool(),
                redis=store.redis(),
                solana=solana,
                gateway=gateway,
                settings=settings,
                sent=sent,
                changes=changes,
                ipn_url=(bound[-1] + IPN_PATH) if bound else "",
            )
            return billing

        yield start


@pytest.fixture
async def billing(make_billing: BillingFactory) -> Billing:
    return await make_billing()
