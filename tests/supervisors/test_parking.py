"""Parked incarnations: actors with the default ``started``/``run`` get no task until
their first message, and nothing else about them may differ (asyncio and trio)."""

from __future__ import annotations

import contextvars
import gc
from typing import Any

import pytest

from messages.system import ChildCounts, CountChildren, ExitReason, Terminated
from runtime import Actor, ActorSystem, ManualClock, Ref
from supervisors import (
    NO_BACKOFF,
    Backoff,
    ChildError,
    Restart,
    Tree,
    dynamic_supervisor,
    start_child,
    start_children,
    supervisor,
    terminate_child,
    worker,
)
from supervisors.dynamic import BULK_START
from tests.conftest import BOTH_BACKENDS
from tests.helpers import eventually
from tests.runtime.probe import Probe

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


class Idle(Actor):
    """No ``started``, no ``run``: parkable. Records what happens to it in ``log``."""

    def __init__(self, log: list[str], name: str = "idle", fail: bool = False) -> None:
        if fail:
            raise ValueError(f"{name} cannot be built")
        self.log = log
        self.name = name
        self.seen: list[Any] = []
        log.append(f"built:{name}")

    async def receive(self, message: Any) -> Any:
        if message == "boom":
            raise RuntimeError(f"{self.name} boom")
        if message == "incarnation":
            return self.ctx.incarnation
        if message == "exit":
            self.ctx.stop()
            return None
        self.seen.append(message)
        return (self.name, message)

    async def stopped(self) -> None:
        self.log.append(f"stop:{self.name}")


class Watcher(Actor):
    def __init__(self, notices: list[Terminated]) -> None:
        self.notices = notices

    async def started(self) -> None:
        self.ctx.watch(self.ctx.lookup("idle"))

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Terminated):
            self.notices.append(message)


def parked(ref: Ref) -> bool:
    return ref._cell._parked is not None


def users_tree(system: ActorSystem | None = None, backoff: Backoff = NO_BACKOFF) -> Tree:
    spec = supervisor("root", [dynamic_supervisor("users", backoff=backoff)])
    return Tree(spec, system)


async def test_a_bulk_start_parks_idle_actors_until_their_first_message() -> None:
    log: list[str] = []
    n = BULK_START + 5
    assert gc.isenabled()
    async with users_tree().running() as tree:
        users = tree.lookup("users")
        specs = [worker(f"user:{i}", Idle, log=log, name=f"u{i}") for i in range(n)]
        refs = await start_children(users, specs)
        assert gc.isenabled()
        assert all(isinstance(ref, Ref) for ref in refs)
        assert log == [f"built:u{i}" for i in range(n)]
        assert all(isinstance(ref, Ref) and parked(ref) for ref in refs)
        assert all(isinstance(ref, Ref) and ref.state == "running" for ref in refs)
        assert await users.ask(CountChildren()) == ChildCounts(
            specs=n, active=n, supervisors=0, workers=n
        )
        first = refs[0]
        assert isinstance(first, Ref)
        assert await first.ask("hi") == ("u0", "hi")
        assert await first.ask("incarnation") == 1
        assert not parked(first)
        assert sum(1 for ref in refs if isinstance(ref, Ref) and parked(ref)) == n - 1
        status = tree.status().find("root/users/user:0")
        assert status is not None and status.state == "running" and status.processed == 2
    assert sorted(entry for entry in log if entry.startswith("stop:")) == sorted(
        f"stop:u{i}" for i in range(n)
    )
    assert gc.isenabled()


async def test_a_parked_actor_stops_gracefully_and_its_watchers_hear_of_it() -> None:
    log: list[str] = []
    notices: list[Terminated] = []
    spec = supervisor(
        "root",
        [
            dynamic_supervisor("users", backoff=NO_BACKOFF),
            worker("idle", Idle, log=log, restart=Restart.TRANSIENT),
            worker("watcher", Watcher, notices=notices),
        ],
    )
    async with Tree(spec).running() as tree:
        ref = await start_child(tree.lookup("users"), worker("user:1", Idle, log=log, name="u1"))
        assert parked(ref) and parked(tree.lookup("idle"))
        await terminate_child(tree.lookup("users"), "user:1")
        assert log == ["built:idle", "built:u1", "stop:u1"]
        assert not ref.alive
        tree.lookup("idle").tell_nowait("exit")
        await eventually(lambda: len(notices) == 1)
        assert notices[0].path == "root/idle" and notices[0].reason is ExitReason.NORMAL
        assert not notices[0].restarting
        assert log[-1] == "stop:idle"


async def test_a_parked_actor_that_crashes_restarts_parked_again() -> None:
    log: list[str] = []
    async with users_tree().running() as tree:
        ref = await start_child(tree.lookup("users"), worker("user:1", Idle, log=log, name="u1"))
        ref.tell_nowait("boom")
        await eventually(lambda: ref._cell.incarnation == 2 and ref.state == "running")
        assert parked(ref)
        assert log == ["built:u1", "stop:u1", "built:u1"]
        assert await ref.ask("incarnation") == 2
        assert ref._cell.restarts_total == 1


async def test_messages_queued_while_restarting_start_the_new_incarnation_at_once() -> None:
    clock = ManualClock()
    log: list[str] = []
    backoff = Backoff(initial=1.0, jitter=0.0)
    async with users_tree(ActorSystem(clock), backoff).running() as tree:
        ref = await start_child(tree.lookup("users"), worker("user:1", Idle, log=log, name="u1"))
        ref.tell_nowait("boom")
        await eventually(lambda: ref.state == "restarting")
        ref.tell_nowait("while-down")
        await clock.advance(1.0)
        await eventually(lambda: ref.state == "running")
        assert not parked(ref)
        assert await ref.ask("incarnation") == 2
        actor = ref._cell.actor
        assert isinstance(actor, Idle) and actor.seen == ["while-down"]


async def test_killing_a_parked_actor_ends_it_killed_and_still_runs_stopped() -> None:
    log: list[str] = []
    async with users_tree().running() as tree:
        ref = await start_child(tree.lookup("users"), worker("user:1", Idle, log=log, name="u1"))
        ref._cell.kill()
        await eventually(lambda: ref._cell.incarnation == 2 and ref.state == "running")
        assert log == ["built:u1", "stop:u1", "built:u1"]
        assert ref._cell.last_error is not None and ref._cell.last_error.startswith("killed")


async def test_a_parkable_actor_whose_constructor_fails_does_not_start() -> None:
    async with users_tree().running() as tree:
        users = tree.lookup("users")
        once = Restart.TEMPORARY
        with pytest.raises(ChildError, match=r"failed to start: ValueError: u1 cannot be built"):
            await start_child(
                users, worker("user:1", Idle, restart=once, log=[], name="u1", fail=True)
            )
        specs = [
            worker(f"bulk:{i}", Idle, restart=once, log=[], fail=i == 3) for i in range(BULK_START)
        ]
        results = await start_children(users, specs)
        assert isinstance(results[3], ChildError)
        assert all(isinstance(r, Ref) for i, r in enumerate(results) if i != 3)


async def test_a_short_name_resolves_again_once_it_is_no_longer_shared() -> None:
    log: list[str] = []
    spec = supervisor(
        "root",
        [
            supervisor("a", [worker("x", Idle, log=log, name="ax")]),
            dynamic_supervisor("b"),
        ],
    )
    async with Tree(spec).running() as tree:
        assert await tree.lookup("x").ask("q") == ("ax", "q")
        await start_child(tree.lookup("b"), worker("x", Idle, log=log, name="bx"))
        with pytest.raises(Exception, match="ambiguous"):
            tree.lookup("x")
        await terminate_child(tree.lookup("b"), "x")
        assert await tree.lookup("x").ask("q") == ("ax", "q")


async def test_a_bulk_start_of_actors_with_started_waits_for_each_to_start() -> None:
    log: list[str] = []
    n = BULK_START
    async with users_tree().running() as tree:
        specs = [worker(f"user:{i}", Probe, log=log, name=f"u{i}") for i in range(n)]
        refs = await start_children(tree.lookup("users"), specs)
        assert gc.isenabled()
        assert sorted(log) == sorted(f"start:u{i}" for i in range(n))
        assert not any(isinstance(ref, Ref) and parked(ref) for ref in refs)
        last = refs[-1]
        assert isinstance(last, Ref) and await last.ask("q") == (f"u{n - 1}", "q")


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


class Reporter(Actor):
    async def receive(self, message: Any) -> Any:
        return request_id.get()


async def test_a_parked_actor_runs_in_its_supervisors_context_not_its_first_senders() -> None:
    async with users_tree().running() as tree:
        ref = await start_child(tree.lookup("users"), worker("user:1", Reporter))
        assert parked(ref)
        request_id.set("first-sender")
        assert await ref.ask("which") == "none"
