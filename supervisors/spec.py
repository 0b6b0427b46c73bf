"""Child specs and supervisor specs: the application tree as plain data (after OTP)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runtime.actor import Actor
from runtime.mailbox import MailboxSpec


class Strategy(StrEnum):
    """Which siblings restart with a crashed child."""

    ONE_FOR_ONE = "one_for_one"
    """Only the crashed child."""
    ONE_FOR_ALL = "one_for_all"
    """Every child: they cannot work without each other."""
    REST_FOR_ONE = "rest_for_one"
    """The crashed child and every child started after it (they depend on it)."""


class Restart(StrEnum):
    """When a child that ended is started again."""

    PERMANENT = "permanent"
    """Always."""
    TRANSIENT = "transient"
    """Only when it ended abnormally (crashed or killed)."""
    TEMPORARY = "temporary"
    """Never; it is removed once it ends."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter between restarts of one child.

    The attempt count resets once an incarnation has run ``reset_after`` seconds, so a
    service that was fine for a while restarts fast after a one-off failure.
    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and self.multiplier >= 1):
            raise ValueError("backoff needs 0 <= initial <= maximum and multiplier >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter is a fraction in [0, 1)")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The wait before restart number ``attempt`` (0-based) of one child."""
        exponent = min(attempt, 64)
        base = min(self.maximum, self.initial * math.pow(self.multiplier, exponent))
        if self.jitter:
            base *= 1.0 + self.jitter * (2.0 * rng.random() - 1.0)
        return max(0.0, min(base, self.maximum * (1.0 + self.jitter)))


NO_BACKOFF = Backoff(initial=0.0, maximum=0.0, jitter=0.0)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start, restart and stop one child."""

    name: str
    actor: type[Actor]
    args: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0
    """Seconds a graceful stop may take before the child is cancelled."""
    mailbox: MailboxSpec | None = None
    """None: the actor class's own declaration."""
    kind: str = "worker"
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"child name {self.name!r} must be non-empty and contain no '/'")
        if self.shutdown < 0 or self.start_timeout <= 0:
            raise ValueError("shutdown must be >= 0 and start_timeout > 0")

    def build(self) -> Actor:
        return self.actor(**self.args)

    @property
    def mailbox_spec(self) -> MailboxSpec:
        return self.mailbox if self.mailbox is not None else self.actor.mailbox


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor's policy and its children, in start order."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    period: float = 5.0
    backoff: Backoff = Backoff()
    children: tuple[ChildSpec, ...] = ()
    seed: int | None = None
    """Seed for the backoff jitter (tests); None for system randomness."""

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.period <= 0:
            raise ValueError("max_restarts must be >= 0 and period > 0")
        names = [child.name for child in self.children]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate child names: {names}")


def worker(
    name: str,
    actor: type[Actor],
    /,
    *,
    restart: Restart = Restart.PERMANENT,
    shutdown: float = 5.0,
    mailbox: MailboxSpec | None = None,
    **args: Any,
) -> ChildSpec:
    """A worker child spec; ``args`` are the actor's constructor arguments."""
    return ChildSpec(
        name=name, actor=actor, args=args, restart=restart, shutdown=shutdown, mailbox=mailbox
    )
