"""The supervisor: starts children in order, restarts them by strategy, gives up by intensity.

It is itself an actor, so it answers ``WhichChildren`` and friends through its mailbox,
and a supervisor that gives up simply crashes: its own parent then applies its policy.
"""

from __future__ import annotations

import contextvars
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import structlog

from messages.status import ActorStatus
from messages.system import (
    ChildCounts,
    ChildInfo,
    CountChildren,
    RestartChild,
    StartChild,
    StartChildren,
    TerminateChild,
    WhichChildren,
)
from runtime._backend import Spawner
from runtime.actor import Actor, parkable
from runtime.cell import Cell, Exit
from runtime.mailbox import MailboxSpec
from supervisors.spec import Backoff, ChildSpec, Restart, Strategy, SupervisorSpec

log = structlog.get_logger("callwatch.supervision")


class SupervisorGaveUp(Exception):
    """Restart intensity exceeded: the supervisor stopped its children and itself."""

    def __init__(self, path: str, child: str, restarts: int, period: float) -> None:
        super().__init__(f"{path} gave up: {restarts} restarts within {period:g} s (last: {child})")
        self.path = path
        self.child = child


class ChildError(Exception):
    """A supervisor command could not be carried out (returned, not raised, by the actor)."""


class _Child:
    __slots__ = ("attempt", "cell", "ran_since", "spec", "state", "stopping", "token")

    def __init__(self, spec: ChildSpec, cell: Cell) -> None:
        self.spec = spec
        self.cell = cell
        self.state = "idle"
        self.attempt = 0
        self.ran_since: float | None = None
        self.stopping = False
        self.token = 0


@dataclass(frozen=True, slots=True)
class _ChildExited:
    child: _Child
    incarnation: int
    exit: Exit


@dataclass(frozen=True, slots=True)
class _RestartDue:
    due: tuple[tuple[_Child, int], ...]


def _raise(error: Exception) -> Actor:
    """A factory failing as the real one did, so the child's task crashes on start."""
    raise error


def _should_restart(restart: Restart, exit: Exit) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return exit.abnormal
    return False


class Supervisor(Actor):
    """OTP-style supervisor over the children of a :class:`SupervisorSpec`."""

    mailbox = MailboxSpec(capacity=10_000)
    dynamic = False

    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self._children: list[_Child] = []
        self._by_name: dict[str, _Child] = {}
        self._restart_log: deque[float] = deque()
        self._rng = random.Random(spec.seed)  # noqa: S311 - jitter, not security
        self._tg: anyio.abc.TaskGroup | None = None
        self._spawner: Spawner | None = None

    # lifecycle

    async def run(self) -> None:
        own = self.ctx._cell
        own.children_status = self._children_status
        own.restart_limit = self.spec.max_restarts
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._spawner = Spawner(tg)
            try:
                for spec in self.spec.children:
                    self._add(self._make_child(spec))
                await self._start_initial()
                await self.ctx.process(self)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop_children(list(self._children))
                    await self._spawner.aclose()
                tg.cancel_scope.cancel()

    def _make_child(self, spec: ChildSpec) -> _Child:
        path = f"{self.ctx.path}/{spec.name}"
        kind = spec.kind
        cell = self.ctx.system.cell(path, spec.name, kind, spec.mailbox_spec)
        cell.restart_period = self.spec.period
        return _Child(spec, cell)

    async def _start_initial(self) -> None:
        for child in list(self._children):
            if child.state == "idle":
                await self._start(child)

    def _launch(self, child: _Child) -> int:
        """Begin the child's next incarnation: a task, or parked until its first message
        when starting it does nothing observable (``Cell.park``)."""
        spawner = self._spawner
        assert spawner is not None
        child.stopping = False
        cell = child.cell
        incarnation = cell.prepare()
        child.state = "running"
        spec = child.spec
        factory: Callable[[], Actor] = spec.build
        if parkable(spec.actor):
            try:
                actor = factory()
            except Exception as exc:
                factory = partial(_raise, exc)
            else:
                context = contextvars.copy_context()
                cell.park(actor, partial(self._unpark, child, incarnation, context))
                return incarnation
        spawner.spawn(self._run_child, child, incarnation, factory)
        return incarnation

    def _unpark(self, child: _Child, incarnation: int, context: contextvars.Context) -> None:
        """Start a parked child's task, in the context it would have had if started at
        launch (not the context of whoever sent the first message)."""
        spawner = self._spawner
        if spawner is not None and not spawner.closed:
            context.run(spawner.spawn, self._run_child, child, incarnation, child.spec.build)

    async def _start(self, child: _Child) -> bool:
        return await self._await_start(child, self._launch(child))

    async def _await_start(self, child: _Child, incarnation: int, logger: Any = log) -> bool:
        cell = child.cell
        started = cell.ready or await cell.wait_ready(child.spec.start_timeout)
        if not started and cell.running:
            cell.kill()
            await cell.wait_exited()
        if started:
            child.ran_since = self.ctx.clock.monotonic()
            logger.info("actor.start", path=cell.path, incarnation=incarnation)
        return started

    async def _run_child(
        self, child: _Child, incarnation: int, factory: Callable[[], Actor]
    ) -> None:
        exit = await child.cell.run(factory)
        self.ctx._cell.mailbox.put_system(_ChildExited(child, incarnation, exit))

    async def _stop_child(self, child: _Child) -> None:
        child.stopping = True
        cell = child.cell
        if cell.running:
            cell.request_stop()
            with anyio.move_on_after(child.spec.shutdown):
                await cell.wait_exited()
            if cell.running:
                log.warning("actor.kill", path=cell.path, shutdown_s=child.spec.shutdown)
                cell.kill()
                await cell.wait_exited()
            log.info("actor.stop", path=cell.path)
        if child.state != "removed":
            child.state = "stopped"

    async def _stop_children(self, children: list[_Child]) -> None:
        for child in reversed(children):
            await self._stop_child(child)

    # messages

    async def receive(self, message: Any) -> Any:
        if isinstance(message, _ChildExited):
            await self._on_exit(message)
        elif isinstance(message, _RestartDue):
            await self._on_restart_due(message)
        elif isinstance(message, WhichChildren):
            return [
                ChildInfo(c.spec.name, c.cell.path, c.spec.kind, c.cell.state, c.spec.restart)
                for c in self._children
            ]
        elif isinstance(message, CountChildren):
            return ChildCounts(
                specs=len(self._children),
                active=sum(1 for c in self._children if c.cell.running),
                supervisors=sum(1 for c in self._children if c.spec.kind != "worker"),
                workers=sum(1 for c in self._children if c.spec.kind == "worker"),
            )
        elif isinstance(message, TerminateChild):
            return await self._terminate(message.name)
        elif isinstance(message, RestartChild):
            return await self._restart_by_name(message.name)
        elif isinstance(message, StartChild):
            return await self._start_dynamic(message.spec)
        elif isinstance(message, StartChildren):
            return await self._start_many(message.specs)
        else:
            self.ctx.log.warning("supervisor.unknown_message", message_type=type(message).__name__)
        return None

    def _find(self, name: str) -> _Child | None:
        return self._by_name.get(name)

    async def _terminate(self, name: str) -> bool | ChildError:
        child = self._find(name)
        if child is None:
            return ChildError(f"no child named {name!r}")
        child.token += 1
        await self._stop_child(child)
        if self.dynamic or child.spec.restart is Restart.TEMPORARY:
            self._remove(child)
        return True

    async def _restart_by_name(self, name: str) -> bool | ChildError:
        child = self._find(name)
        if child is None:
            return ChildError(f"no child named {name!r}")
        if child.cell.running:
            return ChildError(f"{name!r} is running")
        if child.cell.terminal:
            child.cell = self._make_child(child.spec).cell
        return await self._start(child)

    async def _start_dynamic(self, spec: object) -> Any:
        return ChildError(f"{self.ctx.path} is not a dynamic supervisor")

    async def _start_many(self, specs: tuple[object, ...]) -> Any:
        return ChildError(f"{self.ctx.path} is not a dynamic supervisor")

    def _add(self, child: _Child) -> None:
        self._children.append(child)
        self._by_name[child.spec.name] = child

    def _remove(self, child: _Child) -> None:
        child.state = "removed"
        if self._by_name.get(child.spec.name) is child:
            del self._by_name[child.spec.name]
            self._children.remove(child)
        child.cell.terminate()

    async def _on_exit(self, event: _ChildExited) -> None:
        child, exit = event.child, event.exit
        cell = child.cell
        if event.incarnation != cell.incarnation or child.stopping or child.state == "removed":
            return
        if exit.abnormal:
            log.warning(
                "actor.crash", path=cell.path, reason=exit.reason.value, error=cell.last_error
            )
        else:
            log.info("actor.exit", path=cell.path, reason=exit.reason.value)
        if not _should_restart(child.spec.restart, exit):
            child.state = "stopped"
            cell.notify_watchers(exit, restarting=False)
            if self.dynamic or child.spec.restart is Restart.TEMPORARY:
                self._remove(child)
            return
        now = self.ctx.clock.monotonic()
        self._restart_log.append(now)
        while self._restart_log and now - self._restart_log[0] > self.spec.period:
            self._restart_log.popleft()
        if len(self._restart_log) > self.spec.max_restarts:
            cell.notify_watchers(exit, restarting=False)
            log.error(
                "supervisor.give_up",
                path=self.ctx.path,
                child=cell.path,
                restarts=len(self._restart_log),
                period_s=self.spec.period,
            )
            raise SupervisorGaveUp(
                self.ctx.path, child.spec.name, len(self._restart_log), self.spec.period
            ) from exit.error
        backoff: Backoff = self.spec.backoff
        if child.ran_since is not None and now - child.ran_since >= backoff.reset_after:
            child.attempt = 0
        delay = backoff.delay(child.attempt, self._rng)
        child.attempt += 1
        affected = self._affected(child)
        await self._stop_children([c for c in affected if c is not child and c.cell.running])
        for sibling in affected:
            sibling.state = "restarting"
            sibling.cell.state = "restarting"
            sibling.token += 1
        cell.notify_watchers(exit, restarting=True)
        log.info(
            "actor.restart_scheduled",
            path=cell.path,
            delay_s=round(delay, 4),
            attempt=child.attempt,
            with_siblings=[c.spec.name for c in affected if c is not child],
        )
        due = tuple((c, c.token) for c in affected)
        assert self._tg is not None
        self._tg.start_soon(self._wake_after, delay, _RestartDue(due))

    def _affected(self, child: _Child) -> list[_Child]:
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ALL:
            return [c for c in self._children if c.state != "stopped" or c is child]
        if strategy is Strategy.REST_FOR_ONE:
            index = self._children.index(child)
            return [child] + [c for c in self._children[index + 1 :] if c.state != "stopped"]
        return [child]

    async def _wake_after(self, delay: float, message: _RestartDue) -> None:
        await self.ctx.clock.sleep(delay)
        self.ctx._cell.mailbox.put_system(message)

    async def _on_restart_due(self, message: _RestartDue) -> None:
        due = {id(c): token for c, token in message.due}
        for child in list(self._children):
            if due.get(id(child)) != child.token or child.state != "restarting":
                continue
            child.cell.restarts_total += 1
            times = child.cell.restart_times
            times.append(self.ctx.clock.monotonic())
            if len(times) > 100:
                del times[:-100]
            log.info("actor.restart", path=child.cell.path, attempt=child.attempt)
            started = await self._start(child)
            if not started and self.spec.strategy is not Strategy.ONE_FOR_ONE:
                break

    def _children_status(self) -> tuple[ActorStatus, ...]:
        return tuple(child.cell.status() for child in self._children)


def supervisor(
    name: str,
    children: list[ChildSpec] | tuple[ChildSpec, ...],
    *,
    strategy: Strategy = Strategy.ONE_FOR_ONE,
    max_restarts: int = 3,
    period: float = 5.0,
    backoff: Backoff | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown: float = 60.0,
    seed: int | None = None,
) -> ChildSpec:
    """A child spec for a supervisor over ``children``."""
    spec = SupervisorSpec(
        strategy=strategy,
        max_restarts=max_restarts,
        period=period,
        backoff=backoff if backoff is not None else Backoff(),
        children=tuple(children),
        seed=seed,
    )
    return ChildSpec(
        name=name,
        actor=Supervisor,
        args={"spec": spec},
        restart=restart,
        shutdown=shutdown,
        kind="supervisor",
    )
