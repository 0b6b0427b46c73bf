"""What the Redis and PostgreSQL owners share: a probe on a timer that crashes the owner.

Each owner holds one server's connections and publishes them on the `StoreHandle`. The
owner's supervisor restarts it with backoff when the probe fails: that restart is the
reconnect logic, and this loop is the only place that decides a server is gone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio

from actors.store.handle import StoreHandle, StoreUnavailable
from messages.settings import StoreSettings
from runtime import Actor

__all__ = ["StoreOwner", "describe"]


def describe(exc: BaseException) -> str:
    """A short reason for logs and status: the error type and message, never the URL."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class StoreOwner(Actor):
    """Probes its server every ``watch_interval``; a failed probe unpublishes the server's
    connections (`lost`), logs ``store.<server>_lost`` and crashes the actor."""

    server: ClassVar[str]
    """"redis" or "postgres": the name in logs and in `StoreUnavailable`."""
    store: StoreHandle
    settings: StoreSettings

    async def probe(self) -> None:
        """One round trip to the server, within ``call_timeout``; raises when it is gone."""
        raise NotImplementedError

    def lost(self) -> None:
        """Unpublish the connections: callers get `StoreUnavailable` from now on."""
        raise NotImplementedError

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            await self.ctx.process(self)
            tg.cancel_scope.cancel()

    async def _watch(self) -> None:
        while True:
            await self.ctx.clock.sleep(self.settings.watch_interval)
            try:
                await self.probe()
            except Exception as exc:
                self.lost()
                self.ctx.log.warning(f"store.{self.server}_lost", error=describe(exc))
                raise StoreUnavailable(self.server, f"connection lost: {describe(exc)}") from exc

    async def receive(self, message: Any) -> Any:
        self.ctx.log.warning("store.unexpected_message", message_type=type(message).__name__)
        return None
