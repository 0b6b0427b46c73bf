"""The pykka bridge: blocking or CPU-heavy work on a thread, supervised like any actor.

A :class:`ThreadIsland` is an ordinary loop actor that owns one pykka
``ThreadingActor``. Each message it receives is forwarded with a non-blocking pykka
``ask``; the reply is awaited on a worker thread, so the event loop never waits on
the island. An exception raised in the thread comes back to the island, which crashes,
and its supervisor restarts it with a fresh pykka actor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio.to_thread
import pykka

from runtime.actor import Actor
from runtime.mailbox import MailboxSpec


class IslandDied(Exception):
    """The pykka actor stopped by itself (it failed on a ``tell``)."""


class ThreadIsland(Actor):
    """Hosts ``worker`` (a ``pykka.ThreadingActor`` class) as a supervised child."""

    mailbox = MailboxSpec(capacity=1_000)

    def __init__(
        self,
        worker: type[pykka.ThreadingActor],
        worker_args: Mapping[str, Any] | None = None,
        call_timeout: float = 120.0,
    ) -> None:
        self.worker = worker
        self.worker_args = dict(worker_args or {})
        self.call_timeout = call_timeout
        self._ref: pykka.ActorRef[Any] | None = None

    async def started(self) -> None:
        self._ref = self.worker.start(**self.worker_args)

    async def receive(self, message: Any) -> Any:
        ref = self._ref
        if ref is None or not ref.is_alive():
            raise IslandDied(f"{self.worker.__name__} on {self.ctx.path} is no longer running")
        future = ref.ask(message, block=False)
        timeout = self.call_timeout
        return await anyio.to_thread.run_sync(
            lambda: future.get(timeout=timeout), abandon_on_cancel=True
        )

    async def stopped(self) -> None:
        ref, self._ref = self._ref, None
        if ref is not None and ref.is_alive():
            ref.stop(block=False)
