"""A loopback Telegram Bot API emulator that python-telegram-bot talks to via `base_url`.

It enforces Telegram's flood limits with real 429 answers, answers 403 for chats that blocked
the bot, lets tests and people push updates, logs every call and serves a small web chat.
"""

from sandbox.telegram.limits import LimitVerdict, RateLimits
from sandbox.telegram.server import TelegramEmulator, serve
from sandbox.telegram.state import DEFAULT_LIMITED_METHODS, CallRecord, SentMessage

__all__ = [
    "DEFAULT_LIMITED_METHODS",
    "CallRecord",
    "LimitVerdict",
    "RateLimits",
    "SentMessage",
    "TelegramEmulator",
    "serve",
]
