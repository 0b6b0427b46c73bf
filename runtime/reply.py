"""One-shot reply slot for ``ask``."""

from __future__ import annotations

from typing import Any

from runtime._backend import new_signal
from runtime.errors import AskTimeout


class Reply:
    """Where an actor puts its answer to one asked message.

    Set at most once; later sets are ignored, so a timed-out asker and a late reply
    never race into an error.
    """

    __slots__ = ("_error", "_signal", "_value", "done")

    def __init__(self) -> None:
        self._signal = new_signal()
        self._value: Any = None
        self._error: BaseException | None = None
        self.done = False

    def set(self, value: Any) -> None:
        if not self.done:
            self.done = True
            self._value = value
            self._signal.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self.done = True
            self._error = error
            self._signal.set()

    async def wait(self, path: str, message: object, timeout: float) -> Any:
        await self._signal.wait_for(timeout)
        if not self.done:
            self.done = True
            raise AskTimeout(path, message, timeout)
        if self._error is not None:
            raise self._error
        return self._value
