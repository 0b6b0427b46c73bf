"""Messages of the ingest actor: its status ask and the plain-data report it answers.

The report feeds ``callwatch status``, the control server and the health actor (a feed
that went silent, a climbing rejection count), so every field is a plain number, string
or mapping and the whole struct encodes with msgspec as is.
"""

from __future__ import annotations

import msgspec

__all__ = ["IngestReport", "IngestStatus"]


class IngestStatus(msgspec.Struct, frozen=True):
    """Ask: how is the feed connection doing? Answered with an `IngestReport`."""


class IngestReport(msgspec.Struct, frozen=True, kw_only=True):
    """The ingest actor's view of the feed.

    Counts are those of the current incarnation (one incarnation is one connection):
    the process-wide totals are the ``callwatch_ingest_*`` Prometheus counters.
    """

    connected: bool
    url: str
    """The feed's address without credentials, query or path secrets."""
    incarnation: int
    reconnects: int
    """Restarts so far (``incarnation - 1``): each restart is one reconnect."""
    last_seq: int
    """Highest ``seq`` handed to the targets (0 before the first)."""
    resume_seq: int
    """Every ``seq`` up to this one is handled; a reconnect asks the feed for later ones."""
    saved_seq: int | None
    """The resume point last written to Redis (None: nothing written or read yet)."""
    last_event_at: float | None
    """Wall-clock time of the last valid event received."""
    events: dict[str, int]
    """Valid, new events received, by kind (``token_event``, ``price_update``)."""
    forwarded: dict[str, int]
    """Events handed to the targets, by kind."""
    rejected: dict[str, int]
    """Refused input by `messages.wire.REJECT_REASONS` reason."""
    duplicates: int
    """Events dropped because their ``event_id`` or ``seq`` was already seen."""
    coalesced: int
    """Price updates replaced in the mailbox by a newer one for the same token."""
    overflowed: int
    """Events the full mailbox refused (the actor then restarts and replays them)."""
    stale: int
    """Queued events of an earlier connection skipped because the feed replays them."""
    lost: int
    """Events the feed could no longer replay (``resume_gap``) or skipped in its seq."""
    queued: int
    """Events of this connection waiting in the mailbox now."""
    queued_max: int
    """Most events of this connection ever waiting in the mailbox at once."""
    missing_targets: dict[str, int]
    """Events that could not be handed to a target, by the target's registered name."""
    refused: int
    """Price updates a full target mailbox refused (they are dead letters there)."""
    store_errors: int
    """Failed reads and writes of the resume point in Redis."""
