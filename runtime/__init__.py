"""The actor kernel: actors, refs, mailboxes, registry, dead letters, clocks.

Knows nothing of tokens or Telegram. Written against anyio: production runs on asyncio,
tests run it on asyncio and trio.
"""

from runtime.actor import Actor, Context
from runtime.clock import Clock, ManualClock, SystemClock
from runtime.errors import (
    ASK_ERRORS,
    ActorFailed,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NameNotFound,
)
from runtime.mailbox import MailboxSpec, Overflow
from runtime.ref import Ref
from runtime.system import ActorSystem

__all__ = [
    "ASK_ERRORS",
    "Actor",
    "ActorFailed",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Clock",
    "Context",
    "MailboxFull",
    "MailboxSpec",
    "ManualClock",
    "NameNotFound",
    "Overflow",
    "Ref",
    "SystemClock",
]
