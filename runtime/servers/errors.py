"""What goes wrong when callwatch tries to run its own servers, and what to do about it."""

from __future__ import annotations

from typing import Final

__all__ = ["DATABASE_URL_ENV", "REDIS_URL_ENV", "ServerStartError", "ServerUnavailable"]

REDIS_URL_ENV: Final = "CALLWATCH_REDIS_URL"
DATABASE_URL_ENV: Final = "CALLWATCH_DATABASE_URL"


class ServerUnavailable(RuntimeError):
    """No way to run the server here: the message says what to install or which URL to set."""


class ServerStartError(ServerUnavailable):
    """The server binary exists but the server did not come up; the message carries its log."""
