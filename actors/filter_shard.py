"""Filter shards: each holds its users' thresholds column-wise and decides an event for all
of them in one vector pass.

Users are assigned by ``user_id % shards``. A user actor keeps its row current by telling
`UserSettingsChanged` (on start, on every change of settings or standing); the row says
until when the user may be alerted (the subscription's end), so an expiring subscription
needs no message. Events arrive from the router in batches already scored (`FactsBatch`:
computed once for all shards) and are decided in one vector pass per batch; what passed
goes to the notify gate as one `Passes` message per batch (each event's text rendered
once, by the first shard that needs it), which claims and releases the notifications.

A shard keeps no state of its own worth saving: after a restart its users push their
rows again (the users supervisor is restarted with it, see ``actors.user_directory``).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from actors.filter_batch import BatchColumns, FactsBatch
from messages.users import Passed, Passes, UserRemoved, UserSettingsChanged
from runtime import Actor, MailboxSpec, NameNotFound, Ref

__all__ = ["COUNTS", "FilterShard", "ShardCounts", "shard_name", "shard_of"]


def shard_of(user_id: int, shards: int) -> int:
    """The shard index of a user (chat ids of groups are negative; ``%`` keeps it >= 0)."""
    return user_id % shards


def shard_name(index: int) -> str:
    return f"filter-shard-{index}"


class ShardCounts(NamedTuple):
    users: int
    events: int
    passed: int
    """User-event pairs handed to the gate."""
    expired: int
    """Pairs that passed the filters after the user's subscription had ended."""
    undeliverable: int
    """Pairs lost because the gate was not there."""


class _CountsAsk:
    pass


COUNTS: Final = _CountsAsk()


class FilterShard(Actor):
    """Registered as ``filter-shard-<index>``."""

    mailbox = MailboxSpec(capacity=20_000)

    def __init__(
        self, index: int, shards: int, capacity: int = 1024, *, gate: str = "notify-gate"
    ) -> None:
        self.index = index
        self.shards = shards
        self.gate_name = gate
        self.columns = BatchColumns(capacity)
        self.until: dict[int, float] = {}
        self._gate: Ref | None = None
        self.events = 0
        self.passed = 0
        self.expired = 0
        self.undeliverable = 0

    async def receive(self, message: Any) -> Any:
        if isinstance(message, FactsBatch):
            await self._decide(message)
        elif isinstance(message, UserSettingsChanged):
            self._upsert(message)
        elif isinstance(message, UserRemoved):
            self.columns.remove(message.user_id)
            self.until.pop(message.user_id, None)
        elif message is COUNTS:
            return ShardCounts(
                len(self.columns), self.events, self.passed, self.expired, self.undeliverable
            )
        else:
            self.ctx.log.warning("filter_shard_unexpected", message=type(message).__name__)
        return None

    async def _decide(self, batch: FactsBatch) -> None:
        self.events += len(batch)
        now = self.ctx.clock.wall()
        until = self.until
        passed: list[Passed] = []
        for index, passing in self.columns.decide_batch(batch):
            users = tuple(u for u in passing.tolist() if until.get(u, 0.0) > now)
            if len(users) < passing.shape[0]:
                self._expire(passing.tolist(), now)
            if users:
                passed.append(Passed(batch.events[index], batch.text(index), users))
        if not passed:
            return
        count = sum(len(p.user_ids) for p in passed)
        gate = self._gate
        if gate is None or not gate.alive:
            try:
                gate = self._gate = self.ctx.lookup(self.gate_name)
            except NameNotFound:
                self.undeliverable += count
                self.ctx.log.error("filter_shard_no_gate", lost=count)
                return
        await gate.tell(Passes(passed=tuple(passed), now=now, routed_at=batch.routed_at))
        self.passed += count

    def _expire(self, users: list[int], now: float) -> None:
        """Stop deciding for users whose subscription ended (their actor re-enables them
        when it is renewed)."""
        for user_id in users:
            if self.until.get(user_id, 0.0) <= now:
                self.expired += 1
                self.columns.set_active(user_id, False)

    def _upsert(self, change: UserSettingsChanged) -> None:
        if shard_of(change.user_id, self.shards) != self.index:
            self.ctx.log.warning("filter_shard_wrong_user", user_id=change.user_id)
            return
        self.columns.upsert(change.user_id, change.settings, active=change.active)
        self.until[change.user_id] = change.until
