"""Telegram's flood limits as pure bookkeeping over timestamps.

Kept free of I/O and of any clock so tests can drive it with a fake clock and the sender's
pacing can be checked against exactly the rules the emulator enforces: 30 messages per
sliding second overall, one message per `private_interval` per private chat and 20 per
sliding minute per group (negative chat ids).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["LimitVerdict", "RateLimits"]

GROUP_WINDOW = 60.0
GLOBAL_WINDOW = 1.0


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """A refusal: which limit was hit and how long Telegram would ask the caller to wait."""

    kind: str
    retry_after: int


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


@dataclass
class RateLimits:
    """Sliding-window limits; `check` decides, `record` books an accepted message."""

    global_rate: float = 30.0
    private_interval: float = 1.0
    group_per_minute: int = 20
    private_tolerance: float = 0.0
    enabled: bool = True
    _global: deque[float] = field(default_factory=deque, repr=False)
    _private_last: dict[int, float] = field(default_factory=dict, repr=False)
    _group: dict[int, deque[float]] = field(default_factory=dict, repr=False)

    @property
    def global_capacity(self) -> int:
        """Messages allowed in any one-second window (at least one)."""
        return max(1, math.floor(self.global_rate))

    def check(self, chat_id: int, now: float) -> LimitVerdict | None:
        """Return the verdict if a message to `chat_id` at `now` breaks a limit, else None."""
        if not self.enabled:
            return None
        if chat_id < 0:
            window = self._group.get(chat_id)
            if window is not None:
                _prune(window, now - GROUP_WINDOW)
                if len(window) >= self.group_per_minute:
                    return LimitVerdict("group", _retry_after(window[0] + GROUP_WINDOW - now))
        else:
            last = self._private_last.get(chat_id)
            if last is not None and now - last < self.private_interval - self.private_tolerance:
                return LimitVerdict("private", _retry_after(last + self.private_interval - now))
        _prune(self._global, now - GLOBAL_WINDOW)
        if len(self._global) >= self.global_capacity:
            return LimitVerdict("global", _retry_after(self._global[0] + GLOBAL_WINDOW - now))
        return None

    def record(self, chat_id: int, now: float) -> None:
        self._global.append(now)
        if chat_id < 0:
            self._group.setdefault(chat_id, deque()).append(now)
        else:
            self._private_last[chat_id] = now
        if len(self._private_last) > 100_000:
            self._forget_idle(now)

    def _forget_idle(self, now: float) -> None:
        """Bound memory on long runs: chats idle for longer than any window cannot matter."""
        horizon = now - max(self.private_interval, GROUP_WINDOW)
        self._private_last = {c: t for c, t in self._private_last.items() if t > horizon}
        for chat_id in [c for c, w in self._group.items() if not w or w[-1] <= horizon]:
            del self._group[chat_id]


def _prune(window: deque[float], horizon: float) -> None:
    while window and window[0] <= horizon:
        window.popleft()
