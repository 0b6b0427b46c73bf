"""The Redis rule end to end: a Redis of the test's own, killed and restarted under the real
Redis owner actor, watched by the health actor on a manual clock."""

from __future__ import annotations

import anyio
import pytest

from actors.health import HealthBoard
from actors.store.handle import StoreHandle
from actors.store.redis_owner import RedisOwner
from messages.delivery import Outbound
from messages.settings import StoreSettings
from runtime import ActorSystem, ManualClock
from runtime.servers import EmbeddedRedis
from supervisors import Backoff, Tree, supervisor, worker
from tests.health.support import ADMINS, RecordingSender, Stepper, health_worker
from tests.helpers import eventually

pytestmark = pytest.mark.anyio

RECONNECT = Backoff(initial=4.0, maximum=4.0, jitter=0.0, reset_after=1000.0)


@pytest.mark.faults
async def test_redis_down_longer_than_the_threshold_alerts_and_recovers(
    dedicated_redis: EmbeddedRedis,
) -> None:
    clock, board = ManualClock(), HealthBoard()
    outbox: list[Outbound] = []
    store_settings = StoreSettings(call_timeout=1.0, watch_interval=1.0)
    handle = StoreHandle(dedicated_redis.url, "", store_settings.call_timeout)
    spec = supervisor(
        "root",
        [
            worker("sender", RecordingSender, outbox=outbox),
            supervisor(
                "store",
                [worker("redis", RedisOwner, store=handle, settings=store_settings)],
                max_restarts=1000,
                period=60,
                backoff=RECONNECT,
            ),
            health_worker(board, store=handle, probes={"postgres": None}),
        ],
    )
    async with Tree(spec, ActorSystem(clock)).running():
        steps = Stepper(clock, board)
        await steps.first()
        assert steps.state("redis") == "ok"
        assert "postgres" not in board.view()

        await anyio.to_thread.run_sync(dedicated_redis.kill)
        await clock.advance(1.0)  # the owner's next PING fails: it unpublishes and crashes
        await eventually(lambda: not handle.redis_up, timeout=5)
        await steps.step()
        assert steps.state("redis") == "pending"
        assert board.view()["redis"]["detail"].startswith("unreachable")
        await steps.step(6)  # 30 s: store_down_s, not more
        assert outbox == []
        await steps.step()
        assert steps.state("redis") == "firing"
        assert [o.chat_id for o in outbox] == list(ADMINS)
        assert "Redis unreachable" in outbox[0].text
        await steps.step(10)
        assert len(outbox) == len(ADMINS)

        await anyio.to_thread.run_sync(dedicated_redis.start)
        await steps.until(lambda: handle.redis_up, limit=10)
        await steps.step()
        assert steps.state("redis") == "ok"
        assert len(outbox) == 2 * len(ADMINS)
        assert all("recovered: Redis unreachable" in o.text for o in outbox[2:])
