"""The typed errors callers of the runtime see; never a bare hang or a bare exception."""

from __future__ import annotations


class RuntimeErrorBase(Exception):
    """Base of every error the actor runtime raises to callers."""


class AskTimeout(RuntimeErrorBase, TimeoutError):
    """No reply within the ask's timeout (the target is slow, restarting or stuck)."""

    def __init__(self, path: str, message: object, timeout: float) -> None:
        super().__init__(f"{path} did not answer {type(message).__name__} within {timeout:g} s")
        self.path = path
        self.timeout = timeout


class ActorStopped(RuntimeErrorBase):
    """The target actor is stopped for good; its mailbox takes nothing more."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} is stopped")
        self.path = path


class ActorFailed(RuntimeErrorBase):
    """The target crashed while handling the asked message; ``__cause__`` is its error."""

    def __init__(self, path: str, error: BaseException) -> None:
        super().__init__(f"{path} crashed handling the request: {error!r}")
        self.path = path
        self.error = error


class MailboxFull(RuntimeErrorBase):
    """The message could not be queued: the mailbox is full and its policy refused it."""

    def __init__(self, path: str, capacity: int) -> None:
        super().__init__(f"{path} mailbox is full ({capacity})")
        self.path = path
        self.capacity = capacity


class NameNotFound(RuntimeErrorBase, LookupError):
    """No actor is registered under that name or path."""


ASK_ERRORS: tuple[type[RuntimeErrorBase], ...] = (
    NameNotFound,
    AskTimeout,
    ActorFailed,
    ActorStopped,
    MailboxFull,
)
"""Everything asking another actor by name may raise: a caller that can answer without the
other actor catches these (and only these)."""
