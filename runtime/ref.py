"""Refs: the stable handle callers hold; it outlives every restart of its actor."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.cell import Cell


class Ref:
    """Send to an actor without knowing whether it is running, restarting or gone.

    A ref points at the actor's cell (name, mailbox, counters), not at an incarnation,
    so messages sent while the actor restarts wait in the same mailbox.
    """

    __slots__ = ("_cell", "tell_nowait")

    tell_nowait: Callable[[object], bool]
    """Queue without waiting; on overflow the mailbox's policy decides and drops go to
    dead letters (as do messages to a stopped actor). False when this message was not
    queued. (Bound straight to the mailbox: it is the hottest call in the system.)"""

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        self.tell_nowait = cell.mailbox.put_nowait

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def state(self) -> str:
        return self._cell.state

    @property
    def alive(self) -> bool:
        """False once the actor is stopped for good."""
        return not self._cell.terminal

    async def tell(self, message: object) -> None:
        """Queue, waiting for space if the mailbox's policy is to block (backpressure)."""
        await self._cell.tell(message)

    async def ask(self, message: object, timeout: float = 5.0) -> Any:
        """Send and wait for the reply.

        Raises AskTimeout, ActorStopped, ActorFailed (the actor crashed on this message)
        or MailboxFull; never hangs past ``timeout``.
        """
        return await self._cell.ask(message, timeout)

    def __repr__(self) -> str:
        return f"<Ref {self._cell.path} {self._cell.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)
