"""The actor system: the registry, dead letters and clock that every cell shares."""

from __future__ import annotations

from messages.status import ActorStatus
from runtime.cell import Cell
from runtime.clock import Clock, SystemClock
from runtime.dead_letters import DeadLetters
from runtime.mailbox import MailboxSpec
from runtime.registry import Registry


class ActorSystem:
    """Shared services of one running tree; pass a clock to control time in tests."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.registry = Registry()
        self.dead_letters = DeadLetters()

    def cell(self, path: str, name: str, kind: str, mailbox: MailboxSpec) -> Cell:
        """The cell at ``path``: the existing one (so refs survive restarts) or a new one."""
        cell = self.registry.cell(path)
        if cell is None or cell.terminal:
            cell = Cell(self, path, name, kind, mailbox)
            self.registry.register(cell)
        return cell

    def status(self, path: str = "root") -> ActorStatus | None:
        """The status snapshot of the subtree at ``path`` (the whole tree by default)."""
        cell = self.registry.cell(path)
        return None if cell is None else cell.status()
