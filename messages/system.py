"""Messages the runtime itself delivers: death-watch notices and supervisor commands.

They live here, not in ``runtime/``, so an actor can match on them without importing the
kernel, and so the supervisor's commands are ordinary messages a CLI or test can send.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class ExitReason(StrEnum):
    """Why one incarnation of an actor ended (after OTP's exit reasons)."""

    NORMAL = "normal"
    """The actor stopped itself."""
    SHUTDOWN = "shutdown"
    """Its supervisor (or the system) asked it to stop and it did, in time."""
    CRASHED = "crashed"
    """It raised an exception."""
    KILLED = "killed"
    """It did not stop within its shutdown timeout and was cancelled."""


class Terminated(msgspec.Struct, frozen=True):
    """Told to every watcher when a watched actor's incarnation ends.

    ``restarting`` says whether the supervisor will bring it back (the ref stays valid).
    """

    path: str
    reason: ExitReason
    error: str | None = None
    restarting: bool = False


class WhichChildren(msgspec.Struct, frozen=True):
    """Ask a supervisor for its children, in start order."""


class CountChildren(msgspec.Struct, frozen=True):
    """Ask a supervisor how many children it has, by kind and state."""


class ChildInfo(msgspec.Struct, frozen=True):
    """One row of ``WhichChildren``'s reply."""

    name: str
    path: str
    kind: str
    state: str
    restart: str


class ChildCounts(msgspec.Struct, frozen=True):
    """``CountChildren``'s reply, after OTP's ``count_children``."""

    specs: int
    active: int
    supervisors: int
    workers: int


class StartChild(msgspec.Struct, frozen=True):
    """Ask a dynamic supervisor to start one more child from ``spec`` (a ChildSpec)."""

    spec: object


class StartChildren(msgspec.Struct, frozen=True):
    """Ask a dynamic supervisor to start many children at once (boot, bulk load).

    They start concurrently; the reply lists one ref or error per spec, in order.
    """

    specs: tuple[object, ...]


class TerminateChild(msgspec.Struct, frozen=True):
    """Ask a supervisor to stop a child by name; dynamic children are also removed."""

    name: str


class RestartChild(msgspec.Struct, frozen=True):
    """Ask a supervisor to restart a stopped child by name."""

    name: str
