"""The pykka thread island: supervised, restarted on a thread crash, never blocks the loop."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pykka
import pytest

from runtime import ActorFailed
from runtime.island import ThreadIsland
from supervisors import NO_BACKOFF, Tree, supervisor, worker
from tests.conftest import BOTH_BACKENDS
from tests.helpers import eventually

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


class Cruncher(pykka.ThreadingActor):
    """Blocking work: sleeps on its own thread, crashes on request."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise ValueError("thread blew up")
        if isinstance(message, float):
            time.sleep(message)
            return threading.current_thread().name
        return message * 2


def island_tree() -> Tree:
    child = worker("charts", ThreadIsland, worker=Cruncher)
    return Tree(supervisor("root", [child], backoff=NO_BACKOFF))


async def test_island_answers_from_its_thread() -> None:
    async with island_tree().running() as tree:
        assert await tree.lookup("charts").ask(21) == 42
        name = await tree.lookup("charts").ask(0.0)
        assert name != threading.current_thread().name


async def test_thread_crash_is_reported_and_restarted() -> None:
    async with island_tree().running() as tree:
        ref = tree.lookup("charts")
        with pytest.raises(ActorFailed) as info:
            await ref.ask("crash")
        assert isinstance(info.value.error, ValueError)
        await eventually(lambda: ref.state == "running" and ref._cell.incarnation == 2)
        assert await ref.ask(5) == 10
        assert tree.status().find("root/charts").restarts_total == 1  # type: ignore[union-attr]


async def test_loop_keeps_running_while_the_island_works() -> None:
    ticks = 0

    async def ticker(stop: anyio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await anyio.sleep(0.005)

    async with island_tree().running() as tree:
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker, stop)
            await tree.lookup("charts").ask(0.2)
            stop.set()
    assert ticks >= 10
