"""Bounded mailboxes with a declared overflow policy.

The mailbox outlives any one incarnation of its actor (it belongs to the cell), so
messages sent while an actor restarts wait for the new incarnation instead of being lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

from runtime._backend import Signal, new_signal
from runtime.errors import MailboxFull
from runtime.reply import Reply


class Overflow(StrEnum):
    """What a full mailbox does with one more message."""

    BLOCK = "block"
    """``tell`` waits for space; ``tell_nowait`` sends the new message to dead letters."""
    DROP_OLDEST = "drop_oldest"
    """The oldest queued message goes to dead letters to make room."""
    DROP_NEWEST = "drop_newest"
    """The new message goes to dead letters."""
    COALESCE = "coalesce"
    """A message whose key is already queued replaces it in place (newest wins);
    messages without a key, or a new key when full, behave as BLOCK."""


KeyFn = Callable[[object], Hashable | None]


@dataclass(frozen=True, slots=True)
class MailboxSpec:
    """A mailbox declaration: plain data in a child spec."""

    capacity: int = 1_000
    overflow: Overflow = Overflow.BLOCK
    key: KeyFn | None = None

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("mailbox capacity must be at least 1")
        if self.overflow is Overflow.COALESCE and self.key is None:
            raise ValueError("a coalescing mailbox needs a key function")


class _Stop:
    __slots__ = ()


STOP: Final = _Stop()
"""Returned by :meth:`Mailbox.get` once the owner was asked to stop."""

Item = tuple[object, object, None] | list[object]
"""(message, reply | None, None), or [message, reply | None, key] when keyed (coalescing
rewrites a queued keyed item in place); a tuple is the cheaper of the two to make."""
DropFn = Callable[[object, Reply | None, str], None]


class Waker(Protocol):
    """Told when something arrives for the reader: its signal, or what starts a parked
    actor (see ``Cell.park``)."""

    def set(self) -> None: ...


class Mailbox:
    """A bounded queue with one reader (the actor) and any number of writers."""

    __slots__ = (
        "_by_key",
        "_drop",
        "_items",
        "_space_waiters",
        "_stopping",
        "_system",
        "_waiter",
        "capacity",
        "closed",
        "coalesced",
        "key",
        "overflow",
        "path",
    )

    def __init__(self, spec: MailboxSpec, path: str, on_drop: DropFn) -> None:
        self.capacity = spec.capacity
        self.overflow = spec.overflow
        self.key = spec.key
        self.path = path
        self.coalesced = 0
        self.closed = False
        self._drop = on_drop
        self._items: deque[Item] = deque()
        # Lists, not deques: rarely used, and an empty deque costs 600 bytes per actor.
        self._system: list[object] = []
        self._by_key: dict[Hashable, list[object]] = {}
        self._waiter: Waker | None = None
        self._space_waiters: list[Signal] = []
        self._stopping = False

    def __len__(self) -> int:
        return len(self._items)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def put_nowait(self, message: object, reply: Reply | None = None) -> bool:
        """Queue without waiting. False means the message went to dead letters."""
        items = self._items
        if self.key is None and not self.closed and len(items) < self.capacity:
            items.append((message, reply, None))
            if self._waiter is not None:
                self._wake()
            return True
        return self._put_slow(message, reply)

    def _put_slow(self, message: object, reply: Reply | None) -> bool:
        if self.closed:
            self._drop(message, reply, "stopped")
            return False
        key = None
        if self.key is not None:
            key = self.key(message)
            if key is not None:
                queued = self._by_key.get(key)
                if queued is not None:
                    old_reply = queued[1]
                    queued[0] = message
                    queued[1] = reply
                    self.coalesced += 1
                    if isinstance(old_reply, Reply):
                        old_reply.fail(MailboxFull(self.path, self.capacity))
                    return True
        if len(self._items) >= self.capacity:
            if self.overflow is Overflow.DROP_OLDEST:
                oldest = self._items.popleft()
                self._forget_key(oldest)
                self._drop(oldest[0], _as_reply(oldest[1]), "mailbox_full_drop_oldest")
            else:
                reason = (
                    "mailbox_full_drop_newest"
                    if self.overflow is Overflow.DROP_NEWEST
                    else "mailbox_full"
                )
                self._drop(message, reply, reason)
                return False
        if key is None:
            self._items.append((message, reply, None))
        else:
            item = [message, reply, key]
            self._items.append(item)
            self._by_key[key] = item
        self._wake()
        return True

    async def put(self, message: object, reply: Reply | None = None) -> None:
        """Queue, waiting for space when the policy is to block."""
        blocking = self.overflow in (Overflow.BLOCK, Overflow.COALESCE)
        while blocking and len(self._items) >= self.capacity and not self._coalesces(message):
            event = new_signal()
            self._space_waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event in self._space_waiters:
                    self._space_waiters.remove(event)
                raise
        self.put_nowait(message, reply)

    def has_room(self, message: object) -> bool:
        """Whether ``put`` would not wait (room, or a policy that never blocks)."""
        if len(self._items) < self.capacity:
            return True
        return self.overflow in (Overflow.DROP_OLDEST, Overflow.DROP_NEWEST) or self._coalesces(
            message
        )

    def _coalesces(self, message: object) -> bool:
        if self.key is None:
            return False
        key = self.key(message)
        return key is not None and key in self._by_key

    def put_system(self, message: object) -> None:
        """Queue ahead of everything, ignoring capacity: for the runtime's own notices."""
        self._system.append(message)
        self._wake()

    def _forget_key(self, item: Item) -> None:
        key = item[2]
        if key is not None and self._by_key.get(key) is item:
            del self._by_key[key]

    def _pop(self) -> Item:
        item = self._items.popleft()
        if item[2] is not None:
            self._forget_key(item)
        if self._space_waiters:
            self._space_waiters.pop(0).set()
        return item

    def get_nowait(self) -> Item | _Stop | None:
        """The next item if one is ready: system notices first, then STOP, then messages."""
        if self._system:
            return (self._system.pop(0), None, None)
        if self._stopping:
            return STOP
        if self._items:
            return self._pop()
        return None

    async def get(self) -> Item | _Stop:
        """Wait for the next item."""
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            waiter = self._waiter = new_signal()
            await waiter.wait()

    def request_stop(self) -> None:
        """Make the reader's next ``get`` return STOP (after any system notices)."""
        self._stopping = True
        self._wake()

    def reopen(self) -> None:
        """Accept reads again for a new incarnation."""
        self._stopping = False

    def drain(self) -> list[tuple[object, Reply | None]]:
        """Close for good; remove and return every queued message."""
        self.closed = True
        out = [(item[0], _as_reply(item[1])) for item in self._items]
        self._items.clear()
        self._by_key.clear()
        self._system.clear()
        while self._space_waiters:
            self._space_waiters.pop(0).set()
        return out


def _as_reply(value: object) -> Reply | None:
    return value if isinstance(value, Reply) else None
