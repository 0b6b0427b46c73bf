"""A configurable test actor that records what happens to it."""

from __future__ import annotations

from typing import Any

import anyio

from runtime import Actor


class Probe(Actor):
    """Records starts/stops into ``log``; crashes on "boom"; hangs on "hang"."""

    def __init__(
        self,
        log: list[str],
        name: str = "probe",
        fail_start: list[bool] | None = None,
    ) -> None:
        self.log = log
        self.name = name
        self.fail_start = fail_start
        self.seen: list[Any] = []

    async def started(self) -> None:
        if self.fail_start and self.fail_start.pop(0):
            self.log.append(f"fail:{self.name}")
            raise RuntimeError(f"{self.name} failed to start")
        self.log.append(f"start:{self.name}")

    async def receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError(f"{self.name} boom")
        if message == "hang":
            await anyio.sleep_forever()
        if message == "exit":
            self.ctx.stop()
            return None
        if message == "incarnation":
            return self.ctx.incarnation
        self.seen.append(message)
        return (self.name, message)

    async def stopped(self) -> None:
        self.log.append(f"stop:{self.name}")
