"""The cell: everything about an actor that survives its restarts.

A supervisor runs one incarnation after another in the same cell; the cell keeps the
mailbox, the ref, the counters and the watchers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from messages.status import ActorStatus
from messages.system import ExitReason, Terminated
from runtime._backend import Signal, new_signal
from runtime.actor import Actor, Context
from runtime.errors import ActorFailed, ActorStopped, AskTimeout, MailboxFull
from runtime.mailbox import STOP, Mailbox, MailboxSpec
from runtime.ref import Ref
from runtime.reply import Reply

if TYPE_CHECKING:
    from runtime.system import ActorSystem

FAIRNESS_BATCH = 128
"""Messages an actor may handle back to back before it yields to the loop."""

STOPPED_CLEANUP_S = 5.0
"""How long ``stopped()`` may take when the actor is being torn down."""


@dataclass(frozen=True, slots=True)
class Exit:
    """How one incarnation ended."""

    reason: ExitReason
    error: BaseException | None = None

    @property
    def abnormal(self) -> bool:
        return self.reason in (ExitReason.CRASHED, ExitReason.KILLED)


def unwrap(error: Exception) -> Exception:
    """The one error inside nested single-member exception groups (from task groups)."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


_KILLED = Exit(ExitReason.KILLED)
_NORMAL = Exit(ExitReason.NORMAL)
_SHUTDOWN = Exit(ExitReason.SHUTDOWN)


class _Unpark:
    """The mailbox's waiter while an incarnation is parked: the first wake-up starts it."""

    __slots__ = ("start",)

    def __init__(self, start: Callable[[], None]) -> None:
        self.start: Callable[[], None] | None = start

    def set(self) -> None:
        start = self.start
        if start is not None:
            self.start = None
            start()


class Cell:
    """An actor's identity, mailbox and counters, across incarnations."""

    __slots__ = (
        "_exited",
        "_kill",
        "_parked",
        "_ready",
        "_running",
        "_scope",
        "actor",
        "children_status",
        "dead_letters",
        "incarnation",
        "kind",
        "last_error",
        "mailbox",
        "name",
        "path",
        "processed",
        "ref",
        "restart_limit",
        "restart_period",
        "restart_times",
        "restarts_total",
        "shutdown_requested",
        "started_at",
        "state",
        "system",
        "terminal",
        "watchers",
    )

    def __init__(
        self, system: ActorSystem, path: str, name: str, kind: str, mailbox: MailboxSpec
    ) -> None:
        self.system = system
        self.path = path
        self.name = name
        self.kind = kind
        self.mailbox = Mailbox(mailbox, path, self._on_drop)
        self.ref = Ref(self)
        self.state = "idle"
        self.actor: Actor | None = None
        self.processed = 0
        self.dead_letters = 0
        self.restarts_total = 0
        self.restart_times: list[float] = []
        self.restart_period = 0.0
        self.restart_limit = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.incarnation = 0
        self.terminal = False
        self.shutdown_requested = False
        self.watchers: set[Cell] = set()
        self.children_status: Callable[[], tuple[ActorStatus, ...]] | None = None
        self._scope: anyio.CancelScope | None = None
        self._ready: Signal | None = None
        self._exited: anyio.Event | None = None
        self._running = False
        self._kill = False
        self._parked: _Unpark | None = None

    def _on_drop(self, message: object, reply: Reply | None, reason: str) -> None:
        self.dead_letters += 1
        self.system.dead_letters.record(self.path, message, reason, self.system.clock.wall())
        if reply is not None:
            reply.fail(MailboxFull(self.path, self.mailbox.capacity))

    # sending

    def tell_nowait(self, message: object) -> bool:
        return self.mailbox.put_nowait(message)

    async def tell(self, message: object) -> None:
        if self.terminal:
            self._on_drop(message, None, "stopped")
            return
        await self.mailbox.put(message)

    async def ask(self, message: object, timeout: float) -> Any:
        if self.terminal:
            raise ActorStopped(self.path)
        reply = Reply()
        mailbox = self.mailbox
        if mailbox.has_room(message):
            if not mailbox.put_nowait(message, reply):
                raise MailboxFull(self.path, mailbox.capacity)
            return await reply.wait(self.path, message, timeout)
        start = anyio.current_time()
        with anyio.move_on_after(timeout):
            await mailbox.put(message, reply)
        if not reply.done and anyio.current_time() - start < timeout:
            return await reply.wait(self.path, message, timeout - (anyio.current_time() - start))
        if reply.done:
            return await reply.wait(self.path, message, 0)
        raise AskTimeout(self.path, message, timeout)

    # running

    def prepare(self) -> int:
        """Begin a new incarnation (before its task runs); returns its number."""
        self.incarnation += 1
        self.mailbox.reopen()
        self.shutdown_requested = False
        self.actor = None
        self.started_at = None
        self._ready = None
        self._exited = None
        self._kill = False
        self._parked = None
        self._running = True
        self.state = "starting"
        return self.incarnation

    def park(self, actor: Actor, start: Callable[[], None]) -> None:
        """Make the prepared incarnation ready without running it yet.

        For an actor whose ``started`` and ``run`` are the defaults, starting does
        nothing anyone can observe, so it needs no task until there is something to do:
        ``start`` (which must end up calling :meth:`run`) is called once, when the first
        message, notice, stop request or kill arrives. 10,000 idle users then cost no
        task, no coroutines and no cancel scope each.
        """
        actor._bind(Context(self))
        self.actor = actor
        self.mark_ready()
        mailbox = self.mailbox
        if mailbox._items or mailbox._system or mailbox._stopping:
            start()
            return
        self._parked = mailbox._waiter = _Unpark(start)

    async def run(self, factory: Callable[[], Actor]) -> Exit:
        """Run the prepared incarnation (or the parked actor) to its end; say how it ended.

        Never raises an Exception; cancellation from outside still propagates.
        """
        exit = _KILLED
        self._parked = None
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self._kill:
                scope.cancel()
            try:
                actor = self.actor
                if actor is None:
                    actor = factory()
                    actor._bind(Context(self))
                    self.actor = actor
                await actor._lifecycle()
            except Exception as exc:
                exit = Exit(ExitReason.CRASHED, unwrap(exc))
            else:
                exit = _SHUTDOWN if self.shutdown_requested else _NORMAL
        self._scope = None
        self.actor = None
        self.started_at = None
        if exit.error is not None:
            self.last_error = f"{type(exit.error).__name__}: {exit.error}"[:500]
        elif exit.reason is ExitReason.KILLED:
            self.last_error = "killed: did not stop within its shutdown timeout"
        self.state = "crashed" if exit.abnormal else "stopped"
        self._running = False
        if self._ready is not None:
            self._ready.set()
        if self._exited is not None:
            self._exited.set()
        return exit

    def mark_ready(self) -> None:
        if self.started_at is None and self._running:
            self.state = "running"
            self.started_at = self.system.clock.monotonic()
            if self._ready is not None:
                self._ready.set()

    @property
    def ready(self) -> bool:
        """Whether the current incarnation has finished starting and still runs."""
        return self._running and self.started_at is not None

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until this incarnation finished starting; False if it ended or timed out.

        Only the supervisor that prepared the incarnation waits on this.
        """
        if self._running and self.started_at is None:
            if self._ready is None:
                self._ready = new_signal()
            await self._ready.wait_for(timeout)
        return self._running and self.started_at is not None

    async def wait_exited(self) -> None:
        if not self._running:
            return
        if self._exited is None:
            self._exited = anyio.Event()
        await self._exited.wait()

    @property
    def running(self) -> bool:
        return self._running

    def request_stop(self) -> None:
        """Ask the incarnation to finish its current message and stop (graceful)."""
        self.shutdown_requested = True
        self.state = "stopping" if self.running else self.state
        self.mailbox.request_stop()

    def kill(self) -> None:
        """Cancel the incarnation wherever it is (or as soon as its task runs)."""
        if self._scope is not None:
            self._scope.cancel()
        elif self._running:
            self._kill = True
            if self._parked is not None:
                self._parked.set()

    async def process(self, actor: Actor) -> None:
        """The message loop: deliver until STOP. An exception here crashes the actor.

        The fast path (messages waiting, nothing special) is inlined: it is the
        runtime's hottest code.
        """
        self.mark_ready()
        mailbox = self.mailbox
        items = mailbox._items
        receive = actor.receive
        batch = 0
        while True:
            if items and not mailbox._system and not mailbox._stopping:
                item = items.popleft()
                if item[2] is not None:
                    mailbox._forget_key(item)
                if mailbox._space_waiters:
                    mailbox._space_waiters.pop(0).set()
                batch += 1
                if batch >= FAIRNESS_BATCH:
                    batch = 0
                    await anyio.lowlevel.checkpoint()
            else:
                batch = 0
                got = await mailbox.get()
                if got is STOP:
                    return
                item = got  # type: ignore[assignment]
            reply = item[1]
            if reply is None:
                await receive(item[0])
            else:
                try:
                    result = await receive(item[0])
                except Exception as exc:
                    reply.fail(ActorFailed(self.path, exc))  # type: ignore[attr-defined]
                    raise
                reply.set(result)  # type: ignore[attr-defined]
            self.processed += 1

    # lifecycle bookkeeping

    def notify_watchers(self, exit: Exit, restarting: bool) -> None:
        error = None if exit.error is None else f"{type(exit.error).__name__}: {exit.error}"
        notice = Terminated(self.path, exit.reason, error, restarting)
        for watcher in list(self.watchers):
            if watcher.terminal:
                self.watchers.discard(watcher)
            else:
                watcher.mailbox.put_system(notice)

    def terminate(self) -> None:
        """Stop for good: undelivered messages go to dead letters, waiting asks fail."""
        self.terminal = True
        self.state = "stopped"
        for message, reply in self.mailbox.drain():
            self.dead_letters += 1
            self.system.dead_letters.record(self.path, message, "stopped", self.system.clock.wall())
            if reply is not None:
                reply.fail(ActorStopped(self.path))
        self.system.registry.unregister(self)

    def restarts_recent(self) -> int:
        now = self.system.clock.monotonic()
        return sum(1 for t in self.restart_times if now - t <= self.restart_period)

    def status(self) -> ActorStatus:
        uptime = 0.0
        if self.started_at is not None and self.running:
            uptime = max(0.0, self.system.clock.monotonic() - self.started_at)
        children = self.children_status() if self.children_status is not None else ()
        return ActorStatus(
            name=self.name,
            path=self.path,
            kind=self.kind,
            state=self.state,
            restarts_recent=self.restarts_recent(),
            restarts_total=self.restarts_total,
            mailbox_depth=len(self.mailbox),
            mailbox_capacity=self.mailbox.capacity,
            processed=self.processed,
            dead_letters=self.dead_letters,
            last_error=self.last_error,
            uptime_s=round(uptime, 3),
            restart_limit=self.restart_limit,
            children=children,
        )
