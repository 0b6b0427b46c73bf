"""Mailbox overflow policies, backpressure and dead letters (asyncio and trio)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from runtime import Actor, MailboxSpec, Overflow
from supervisors import Tree, supervisor, worker
from tests.conftest import BOTH_BACKENDS
from tests.helpers import eventually

pytestmark = [pytest.mark.anyio, BOTH_BACKENDS]


class Gate(Actor):
    """Blocks on its first message until the gate opens, then records everything."""

    def __init__(self, gate: anyio.Event, seen: list[Any]) -> None:
        self.gate = gate
        self.seen = seen

    async def receive(self, message: Any) -> Any:
        await self.gate.wait()
        self.seen.append(message)
        return message


def tree_with(mailbox: MailboxSpec, gate: anyio.Event, seen: list[Any]) -> Tree:
    return Tree(supervisor("root", [worker("gate", Gate, mailbox=mailbox, gate=gate, seen=seen)]))


async def fill(tree: Tree, messages: list[Any]) -> None:
    ref = tree.lookup("gate")
    ref.tell_nowait("first")  # taken out of the mailbox and blocked on the gate
    await eventually(lambda: len(ref._cell.mailbox) == 0)
    for message in messages:
        ref.tell_nowait(message)


async def test_drop_newest_sends_overflow_to_dead_letters() -> None:
    gate, seen = anyio.Event(), []
    tree = tree_with(MailboxSpec(capacity=3, overflow=Overflow.DROP_NEWEST), gate, seen)
    async with tree.running():
        await fill(tree, [1, 2, 3, 4, 5])
        dead = tree.system.dead_letters
        assert dead.by_reason["mailbox_full_drop_newest"] == 2
        assert [d.message for d in dead.recent] == ["4", "5"]
        gate.set()
        await eventually(lambda: len(seen) == 4)
    assert seen == ["first", 1, 2, 3]


async def test_drop_oldest_keeps_the_newest() -> None:
    gate, seen = anyio.Event(), []
    tree = tree_with(MailboxSpec(capacity=3, overflow=Overflow.DROP_OLDEST), gate, seen)
    async with tree.running():
        await fill(tree, [1, 2, 3, 4, 5])
        assert tree.system.dead_letters.by_reason["mailbox_full_drop_oldest"] == 2
        gate.set()
        await eventually(lambda: len(seen) == 4)
    assert seen == ["first", 3, 4, 5]


def by_token(message: object) -> object:
    return message[0] if isinstance(message, tuple) else None


async def test_coalesce_keeps_newest_per_key_and_never_drops_keyless() -> None:
    gate, seen = anyio.Event(), []
    spec = MailboxSpec(capacity=10, overflow=Overflow.COALESCE, key=by_token)
    tree = tree_with(spec, gate, seen)
    async with tree.running():
        await fill(tree, [("a", 1), ("b", 1), "event-1", ("a", 2), ("a", 3), ("b", 2), "event-2"])
        ref = tree.lookup("gate")
        assert len(ref._cell.mailbox) == 4
        assert ref._cell.mailbox.coalesced == 3
        gate.set()
        await eventually(lambda: len(seen) == 5)
    assert seen == ["first", ("a", 3), ("b", 2), "event-1", "event-2"]
    assert tree.system.dead_letters.total == 0


async def test_block_policy_applies_backpressure_to_tell() -> None:
    gate, seen = anyio.Event(), []
    tree = tree_with(MailboxSpec(capacity=2, overflow=Overflow.BLOCK), gate, seen)
    async with tree.running():
        await fill(tree, [1, 2])
        ref = tree.lookup("gate")
        sent = anyio.Event()

        async def sender() -> None:
            await ref.tell(3)
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender)
            await anyio.lowlevel.checkpoint()
            assert not sent.is_set()
            assert ref.tell_nowait(99) is False  # tell_nowait never blocks: dead letter
            gate.set()
            await sent.wait()
        await eventually(lambda: len(seen) == 4)
    assert seen == ["first", 1, 2, 3]
    assert tree.system.dead_letters.by_reason["mailbox_full"] == 1


async def test_mailbox_spec_validation() -> None:
    with pytest.raises(ValueError):
        MailboxSpec(capacity=0)
    with pytest.raises(ValueError):
        MailboxSpec(overflow=Overflow.COALESCE)
