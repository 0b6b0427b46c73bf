"""The actor base class and the context an incarnation sees."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import structlog

from runtime.mailbox import MailboxSpec
from runtime.ref import Ref

if TYPE_CHECKING:
    from runtime.cell import Cell
    from runtime.clock import Clock
    from runtime.system import ActorSystem

STOPPED_TIMEOUT_S = 5.0
"""How long ``stopped()`` may run, even when the actor is being cancelled."""


class Actor:
    """Subclass and implement :meth:`receive`; the return value answers an ``ask``.

    State lives in attributes of the instance and is touched only by its own
    incarnation, so no locks: the mailbox is the lock. An exception from any hook
    crashes this incarnation and the supervisor decides what happens next.

    Actors that own a connection override :meth:`run` to listen to it alongside the
    mailbox (``await self.ctx.process(self)``); when the connection breaks they raise.

    An actor that overrides neither :meth:`started` nor :meth:`run` is built when it is
    started but gets its task only when its first message (or a stop) arrives: idle
    actors by the ten thousand then cost little (see ``Cell.park``).
    """

    mailbox: ClassVar[MailboxSpec] = MailboxSpec()
    """The default mailbox; a child spec may declare another."""

    ctx: Context

    def _bind(self, ctx: Context) -> None:
        self.ctx = ctx

    async def started(self) -> None:
        """Acquire resources. The supervisor starts the next sibling only after this."""

    async def receive(self, message: Any) -> Any:
        """Handle one message."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {message!r}")

    async def stopped(self) -> None:
        """Release resources; runs after a graceful stop and after a crash."""

    async def run(self) -> None:
        """The incarnation's body: by default, the message loop."""
        await self.ctx.process(self)

    async def _lifecycle(self) -> None:
        try:
            await self.started()
            await self.run()
        finally:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + STOPPED_TIMEOUT_S
                await self.stopped()


def parkable(cls: type[Actor]) -> bool:
    """Whether starting an incarnation of ``cls`` does nothing observable (``started``
    and ``run`` are the defaults), so it may wait for its first message without a task
    (``Cell.park``)."""
    return (
        cls.started is Actor.started
        and cls.run is Actor.run
        and cls._lifecycle is Actor._lifecycle
        and cls._bind is Actor._bind
    )


class Context:
    """What an incarnation knows about itself and its system."""

    __slots__ = ("_cell", "_log")

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        self._log: Any = None

    @property
    def log(self) -> Any:
        """A structlog logger bound to this actor's path (made on first use: spawning
        10,000 actors should not build 10,000 loggers nobody uses)."""
        if self._log is None:
            self._log = structlog.get_logger("callwatch.actor").bind(path=self._cell.path)
        return self._log

    @property
    def ref(self) -> Ref:
        return self._cell.ref

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def system(self) -> ActorSystem:
        return self._cell.system

    @property
    def clock(self) -> Clock:
        return self._cell.system.clock

    @property
    def incarnation(self) -> int:
        """1 for the first start, 2 after the first restart, ..."""
        return self._cell.incarnation

    def ready(self) -> None:
        """Tell the supervisor this incarnation has started (``process`` also does)."""
        self._cell.mark_ready()

    async def process(self, actor: Actor) -> None:
        """Run the message loop until the actor is asked to stop."""
        await self._cell.process(actor)

    def lookup(self, name: str) -> Ref:
        """The ref of another actor by path or registered name (raises NameNotFound)."""
        return self._cell.system.registry.lookup(name)

    def watch(self, ref: Ref) -> None:
        """Be told (a ``Terminated`` message) whenever ``ref``'s actor stops or crashes."""
        ref._cell.watchers.add(self._cell)

    def unwatch(self, ref: Ref) -> None:
        ref._cell.watchers.discard(self._cell)

    def stop(self) -> None:
        """Stop this actor normally once the current message is handled."""
        self._cell.mailbox.request_stop()
