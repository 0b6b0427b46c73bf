"""Outbound Telegram messages: what any actor asks the sender to deliver."""

from __future__ import annotations

from enum import IntEnum

import msgspec


class Lane(IntEnum):
    """Priority lanes of the sender; lower goes first (with aging, so bulk never starves)."""

    INTERACTIVE = 0
    """Replies to something a user just did."""
    ALERT = 1
    """Token notifications and multiplier alerts."""
    BULK = 2
    """Broadcasts and reports."""


class Outbound(msgspec.Struct, frozen=True, kw_only=True):
    """One message for one chat. ``text`` is HTML (already escaped where it must be).

    ``dedup_key`` makes delivery idempotent across restarts (the same key is sent once);
    ``digest_key`` lets backed-up alerts for one chat merge into one digest message.
    """

    chat_id: int
    text: str
    lane: Lane = Lane.INTERACTIVE
    reply_markup: dict[str, object] | None = None
    dedup_key: str | None = None
    digest_key: str | None = None
    photo: bytes | None = None
    edit_message_id: int | None = None
    kind: str = "message"
    """What this is, for metrics: message, notification, multiplier, broadcast, report."""


class Outbounds(msgspec.Struct, frozen=True):
    """Several messages in one hop (the notify gate releases its claims in batches, and a
    message per notification would cost more than deciding them)."""

    items: tuple[Outbound, ...]


class Delivered(msgspec.Struct, frozen=True):
    """Reply to an asked Outbound (interactive lane) once Telegram accepted it."""

    chat_id: int
    message_id: int


class ChatBlocked(msgspec.Struct, frozen=True):
    """The sender got 403 for this chat: the user blocked the bot (or left)."""

    chat_id: int


class DeliveryFailed(msgspec.Struct, frozen=True):
    """A message was given up on after its retries; recorded with the reason."""

    chat_id: int
    kind: str
    reason: str


MAX_TEXT = 4096
"""Telegram's limit on a message text, counted after HTML entities are parsed."""
MAX_CAPTION = 1024
"""Telegram's limit on a photo caption."""


class SenderStats(msgspec.Struct, frozen=True):
    """Ask the sender how it is doing; the answer is a :class:`SenderStatus`."""


class SenderStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The sender's state as plain data (for status pages, health checks and tests).

    Counters are this incarnation's; the process-wide Prometheus counters live in
    ``actors.sender``.
    """

    queued: dict[str, int]
    """Messages waiting per lane name (accepted and persisted, not yet sent)."""
    unsaved: int
    """Messages received but not yet written to the durable outbox."""
    in_flight: int
    """Requests on the wire (a digest is one request)."""
    accepted: int
    """Messages written to the durable outbox by this incarnation (reloaded ones not counted)."""
    paused_until: float | None
    """Wall-clock time until which every lane is paused after a 429, if paused."""
    sent: dict[str, int]
    """Telegram requests that succeeded, per lane name (a digest counts once)."""
    delivered: int
    """Outbound messages delivered (each part of a digest counts)."""
    rate_limited: int
    blocked: int
    dropped: int
    """Messages dropped because their chat blocked the bot."""
    failed: int
    retried: int
    duplicates: int
    coalesced: int
    """Alerts merged into another message's digest."""
    unknown_fate: int
    """Messages found in flight when the outbox was reloaded (resent once)."""
    store_errors: int
    recent_failures: tuple[DeliveryFailed, ...] = ()
