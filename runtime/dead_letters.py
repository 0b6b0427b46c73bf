"""Dead letters: every message that could not be delivered, counted and inspectable."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

import structlog

log = structlog.get_logger("callwatch.dead_letters")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One undelivered message, as kept for inspection (the message itself, truncated repr)."""

    path: str
    reason: str
    message_type: str
    message: str
    at: float


class DeadLetters:
    """Counts by reason and by recipient, keeps the most recent, logs a sample.

    Logging every dead letter during a flood would turn one problem into two, so each
    (recipient, reason) pair logs its 1st, 10th, 100th, ... occurrence with the count.
    """

    def __init__(self, keep: int = 200) -> None:
        self.by_reason: Counter[str] = Counter()
        self.by_path: Counter[str] = Counter()
        self._pairs: Counter[tuple[str, str]] = Counter()
        self.recent: deque[DeadLetter] = deque(maxlen=keep)
        self.total = 0

    def record(self, path: str, message: object, reason: str, at: float) -> None:
        self.total += 1
        self.by_reason[reason] += 1
        self.by_path[path] += 1
        pair = (path, reason)
        self._pairs[pair] += 1
        count = self._pairs[pair]
        text = repr(message)
        if len(text) > 200:
            text = text[:197] + "..."
        self.recent.append(DeadLetter(path, reason, type(message).__name__, text, at))
        if _is_sample(count):
            log.warning(
                "dead_letter",
                path=path,
                reason=reason,
                message_type=type(message).__name__,
                count=count,
            )

    def for_path(self, path: str) -> int:
        return self.by_path[path]


def _is_sample(count: int) -> bool:
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1
