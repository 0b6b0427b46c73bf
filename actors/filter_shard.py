"""Filter shards: each holds its users' thresholds column-wise and decides an event for all
of them in one vector pass.

Users are assigned by ``user_id % shards``. A user actor keeps its row current by telling
`UserSettingsChanged` (on start, on every change of settings or eligibility); the row
carries the actor's ref, so a passing user costs one `tell` and no lookup. Events arrive
from the router in batches already scored (`FactsBatch`: computed once for all shards),
are decided in one vector pass per batch, and every user passing an event gets the same
`Candidate` (its text rendered once, by the first shard that needs it).

A shard keeps no state of its own worth saving: after a restart its users push their
rows again (the users supervisor is restarted with it, see ``actors.user_directory``).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

from actors.filter_batch import BatchColumns, FactsBatch
from messages.users import UserRemoved, UserSettingsChanged
from runtime import Actor, MailboxSpec, Ref

__all__ = ["COUNTS", "FilterShard", "ShardCounts", "shard_name", "shard_of"]


def shard_of(user_id: int, shards: int) -> int:
    """The shard index of a user (chat ids of groups are negative; ``%`` keeps it >= 0)."""
    return user_id % shards


def shard_name(index: int) -> str:
    return f"filter-shard-{index}"


class ShardCounts(NamedTuple):
    users: int
    events: int
    candidates: int
    unreachable: int


class _CountsAsk:
    pass


COUNTS: Final = _CountsAsk()


class FilterShard(Actor):
    """Registered as ``filter-shard-<index>``."""

    mailbox = MailboxSpec(capacity=20_000)

    def __init__(self, index: int, shards: int, capacity: int = 1024) -> None:
        self.index = index
        self.shards = shards
        self.columns = BatchColumns(capacity)
        self.refs: dict[int, Ref] = {}
        self.events = 0
        self.candidates = 0
        self.unreachable = 0

    async def receive(self, message: Any) -> Any:
        if isinstance(message, FactsBatch):
            self._decide(message)
        elif isinstance(message, UserSettingsChanged):
            self._upsert(message)
        elif isinstance(message, UserRemoved):
            self.columns.remove(message.user_id)
            self.refs.pop(message.user_id, None)
        elif message is COUNTS:
            return ShardCounts(len(self.columns), self.events, self.candidates, self.unreachable)
        else:
            self.ctx.log.warning("filter_shard_unexpected", message=type(message).__name__)
        return None

    def _decide(self, batch: FactsBatch) -> None:
        self.events += len(batch)
        refs = self.refs
        for index, passing in self.columns.decide_batch(batch):
            candidate = batch.candidate(index)
            for user_id in passing.tolist():
                ref = refs.get(user_id)
                if ref is not None and ref.tell_nowait(candidate):
                    self.candidates += 1
                else:
                    self.unreachable += 1

    def _upsert(self, change: UserSettingsChanged) -> None:
        if shard_of(change.user_id, self.shards) != self.index:
            self.ctx.log.warning("filter_shard_wrong_user", user_id=change.user_id)
            return
        self.columns.upsert(change.user_id, change.settings, active=change.active)
        if isinstance(change.ref, Ref):
            self.refs[change.user_id] = change.ref
