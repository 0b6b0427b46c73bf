"""Refs, tell/ask, errors, registry, death watch, clocks (asyncio and trio)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from messages.system import ExitReason, Terminated
from runtime import (
    Actor,
    ActorFailed,
    ActorStopped,
    AskTimeout,
    ManualClock,
    NameNotFound,
)
from supervisors import NO_BACKOFF, Restart, Tree, supervisor, terminate_child, worker
from tests.conftest import BOTH_BACKENDS
from tests.helpers import eventually
from tests.runtime.probe import Probe

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


def one(log: list[str], restart: Restart = Restart.PERMANENT, shutdown: float = 5.0) -> Tree:
    child = worker("p", Probe, restart=restart, shutdown=shutdown, log=log, name="p")
    return Tree(supervisor("root", [child], backoff=NO_BACKOFF))


async def test_tell_and_ask() -> None:
    log: list[str] = []
    async with one(log).running() as tree:
        ref = tree.lookup("p")
        assert ref.tell_nowait("x")
        await ref.tell("y")
        assert await ref.ask("z") == ("p", "z")
        assert ref._cell.processed == 3


async def test_ask_timeout_raises_typed_error() -> None:
    async with one([], shutdown=0.05).running() as tree:
        ref = tree.lookup("p")
        ref.tell_nowait("hang")
        with pytest.raises(AskTimeout) as info:
            await ref.ask("late", timeout=0.05)
        assert isinstance(info.value, TimeoutError)
        assert "root/p" in str(info.value)


async def test_crash_while_asked_fails_the_asker_and_restarts() -> None:
    log: list[str] = []
    async with one(log).running() as tree:
        ref = tree.lookup("p")
        with pytest.raises(ActorFailed) as info:
            await ref.ask("boom")
        assert isinstance(info.value.error, RuntimeError)
        assert await ref.ask("incarnation") == 2
        assert log == ["start:p", "stop:p", "start:p"]


async def test_ref_delivers_after_restart_and_messages_wait_during_backoff() -> None:
    clock = ManualClock()
    log: list[str] = []
    from runtime import ActorSystem
    from supervisors import Backoff

    spec = supervisor(
        "root",
        [worker("p", Probe, log=log, name="p")],
        backoff=Backoff(initial=1.0, jitter=0.0),
    )
    async with Tree(spec, ActorSystem(clock)).running() as tree:
        ref = tree.lookup("p")
        ref.tell_nowait("boom")
        await eventually(lambda: ref.state == "restarting")
        ref.tell_nowait("while-down")
        assert ref._cell.mailbox and len(ref._cell.mailbox) == 1
        await clock.advance(1.0)
        await eventually(lambda: ref.state == "running")
        assert tree.lookup("p") is not None and tree.lookup("p") == ref
        assert await ref.ask("incarnation") == 2
        actor = ref._cell.actor
        assert isinstance(actor, Probe)
        assert actor.seen == ["while-down"]


async def test_ask_a_stopped_actor_raises_and_tell_goes_to_dead_letters() -> None:
    log: list[str] = []
    async with one(log, restart=Restart.TEMPORARY).running() as tree:
        ref = tree.lookup("p")
        await terminate_child(tree.root, "p")
        assert not ref.alive
        with pytest.raises(ActorStopped):
            await ref.ask("x")
        assert ref.tell_nowait("x") is False
        assert tree.system.dead_letters.by_reason["stopped"] == 1
        with pytest.raises(NameNotFound):
            tree.lookup("p")


class Watcher(Actor):
    def __init__(self, notices: list[Terminated]) -> None:
        self.notices = notices

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Terminated):
            self.notices.append(message)
        elif message == "watch":
            self.ctx.watch(self.ctx.lookup("p"))
        return None


async def test_death_watch_reports_crash_and_stop() -> None:
    notices: list[Terminated] = []
    spec = supervisor(
        "root",
        [
            worker("p", Probe, log=[], name="p", restart=Restart.TRANSIENT),
            worker("w", Watcher, notices=notices),
        ],
        backoff=NO_BACKOFF,
    )
    async with Tree(spec).running() as tree:
        await tree.lookup("w").ask("watch")
        tree.lookup("p").tell_nowait("boom")
        await eventually(lambda: len(notices) == 1)
        assert notices[0].reason is ExitReason.CRASHED and notices[0].restarting
        assert "boom" in (notices[0].error or "")
        await eventually(lambda: tree.lookup("p").state == "running")
        tree.lookup("p").tell_nowait("exit")
        await eventually(lambda: len(notices) == 2)
        assert notices[1].reason is ExitReason.NORMAL and not notices[1].restarting


async def test_registry_by_path_and_name() -> None:
    spec = supervisor(
        "root",
        [
            supervisor("a", [worker("x", Probe, log=[], name="ax")]),
            supervisor("b", [worker("x", Probe, log=[], name="bx"), worker("y", Probe, log=[])]),
        ],
    )
    async with Tree(spec).running() as tree:
        assert await tree.lookup("root/a/x").ask("q") == ("ax", "q")
        assert await tree.lookup("y").ask("q") == ("probe", "q")
        with pytest.raises(NameNotFound, match="ambiguous"):
            tree.lookup("x")
        with pytest.raises(NameNotFound):
            tree.lookup("nobody")
        assert tree.system.registry.paths() == [
            "root",
            "root/a",
            "root/a/x",
            "root/b",
            "root/b/x",
            "root/b/y",
        ]


async def test_manual_clock_wakes_sleepers_in_order() -> None:
    clock = ManualClock()
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.monotonic() - 1_000.0)

    async with anyio.create_task_group() as tg:
        for s in (3.0, 1.0, 2.0):
            tg.start_soon(sleeper, s)
        await eventually(lambda: clock.sleepers == 3)
        await clock.advance(1.5)
        assert woke == [1.0]
        await clock.advance(5)
    assert woke == [1.0, 2.0, 3.0]
    assert sorted(clock.sleeps) == [1.0, 2.0, 3.0]
