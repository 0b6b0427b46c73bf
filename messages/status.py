"""The supervision tree's status snapshot as plain data.

One struct type serves ``callwatch status``, ``GET /status`` and the health actor, so
what an operator sees and what alerts fire on are the same numbers.
"""

from __future__ import annotations

import msgspec


class ActorStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one actor (or supervisor) at the moment of the snapshot."""

    name: str
    path: str
    kind: str
    state: str
    restarts_recent: int = 0
    restarts_total: int = 0
    mailbox_depth: int = 0
    mailbox_capacity: int = 0
    processed: int = 0
    dead_letters: int = 0
    last_error: str | None = None
    uptime_s: float = 0.0
    restart_limit: int = 0
    children: tuple[ActorStatus, ...] = ()

    def walk(self) -> list[ActorStatus]:
        """This node and every descendant, depth first, in start order."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out

    def find(self, path: str) -> ActorStatus | None:
        """The node at ``path``, if any."""
        for node in self.walk():
            if node.path == path:
                return node
        return None


def encode_status(status: ActorStatus) -> bytes:
    """JSON for the control server and ``callwatch status --json``."""
    return msgspec.json.encode(status)


def decode_status(raw: bytes | str) -> ActorStatus:
    """Parse what ``encode_status`` wrote (the CLI reads it from the control server)."""
    return msgspec.json.decode(raw, type=ActorStatus)
