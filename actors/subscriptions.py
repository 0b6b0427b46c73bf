"""Subscriptions: written to PostgreSQL first, then cached in Redis, then the user is told.

A subscription is a chain of segments (rows of `subscriptions`): each grant starts where
the user's current expiry ends (or now, when there is none), so renewals extend instead of
overlapping. Lifetime is a segment that ends at PostgreSQL's `infinity` (asyncpg reads it
as :data:`LIFETIME_END`). Revoking one segment (a refund) pulls the later ones back by the
time it no longer covers, so the chain stays gapless.

The functions that write take a connection that is already inside a transaction, so the
payment that pays for a grant and the grant itself commit together or not at all. Every
write first locks the user's row, which serializes concurrent grants for one user (two
renewals at once still extend one after the other). Time is always passed in (`now`,
from the actor's clock), never read from the database, so tests can move it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias
from uuid import UUID

import asyncpg
import msgspec
import redis.exceptions
import structlog

from actors.store.handle import StoreHandle, StoreUnavailable
from messages.billing import SubscriptionChanged, SubscriptionInfo

if TYPE_CHECKING:
    from runtime import Context

__all__ = [
    "CACHE_PREFIX",
    "LIFETIME_END",
    "STORE_ERRORS",
    "Conn",
    "Segment",
    "Source",
    "cache_status",
    "cached_status",
    "due_reminders",
    "ensure_user",
    "grant",
    "is_active",
    "is_lifetime",
    "publish",
    "recently_expired",
    "revoke_all",
    "revoke_order",
    "status",
    "tell_user",
    "utc",
]

log = structlog.get_logger(__name__)

LIFETIME_END: Final = datetime.max.replace(tzinfo=UTC)
"""What we write for a lifetime segment's end: asyncpg stores it as `'infinity'`."""
CACHE_PREFIX: Final = "callwatch:sub:"
"""Redis key `callwatch:sub:<chat_id>`: the JSON of a :class:`SubscriptionInfo`."""
_CACHE_MAX_TTL: Final = 7 * 86400
_CACHE_INACTIVE_TTL: Final = 86400

Source = Literal["payment", "coupon", "admin"]

STORE_ERRORS: Final = (
    StoreUnavailable,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
)
"""What a database that is down or restarting looks like to a caller."""

_REDIS_ERRORS: Final = (StoreUnavailable, redis.exceptions.RedisError, OSError, TimeoutError)

Conn: TypeAlias = Any
"""An asyncpg connection or pool connection (asyncpg ships no type information)."""


def utc(seconds: float) -> datetime:
    """Unix seconds (the clock's `wall()`) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def is_lifetime(moment: datetime) -> bool:
    """True for `infinity`, which asyncpg reads back as a naive `datetime.max`."""
    return moment.replace(tzinfo=None) == datetime.max


@dataclass(frozen=True, slots=True)
class Segment:
    id: int
    chat_id: int
    plan: str
    starts_at: datetime
    expires_at: datetime

    @property
    def lifetime(self) -> bool:
        return is_lifetime(self.expires_at)


async def ensure_user(conn: Conn, chat_id: int) -> None:
    """Orders and grants reference `users`; a user we never saw gets a bare row."""
    await conn.execute(
        "INSERT INTO users (chat_id) VALUES ($1) ON CONFLICT (chat_id) DO NOTHING", chat_id
    )


async def _lock_user(conn: Conn, chat_id: int) -> None:
    await ensure_user(conn, chat_id)
    await conn.execute("SELECT 1 FROM users WHERE chat_id = $1 FOR UPDATE", chat_id)


async def _current_expiry(conn: Conn, chat_id: int, now: datetime) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT max(expires_at) FROM subscriptions "
        "WHERE chat_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        chat_id,
        now,
    )
    return value


async def grant(
    conn: Conn,
    *,
    chat_id: int,
    plan: str,
    duration: timedelta | None,
    now: datetime,
    source: Source,
    order_id: UUID | None = None,
    coupon_id: int | None = None,
    granted_by: int | None = None,
) -> Segment:
    """Add a segment of `duration` (None: lifetime) after the user's current expiry.

    Call inside a transaction. A finite grant to a lifetime user is recorded (it was paid
    for) but changes nothing: it overlaps from now.
    """
    await _lock_user(conn, chat_id)
    current = await _current_expiry(conn, chat_id, now)
    if duration is None:
        starts, expires = now, LIFETIME_END
    elif current is None or is_lifetime(current):
        starts, expires = now, now + duration
    else:
        starts = max(now, current)
        expires = starts + duration
    row = await conn.fetchrow(
        "INSERT INTO subscriptions (chat_id, plan, starts_at, expires_at, source, order_id,"
        " coupon_id, granted_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " RETURNING id",
        chat_id,
        plan,
        starts,
        expires,
        source,
        order_id,
        coupon_id,
        granted_by,
        now,
    )
    assert row is not None
    log.info(
        "subscription.granted",
        chat_id=chat_id,
        plan=plan,
        source=source,
        expires_at=expires.isoformat(),
        order_id=str(order_id) if order_id else None,
    )
    return Segment(row["id"], chat_id, plan, starts, expires)


async def revoke_order(
    conn: Conn, order_id: UUID, *, now: datetime, by: int | None, reason: str
) -> int | None:
    """Revoke the segment an order paid for (a refund); returns its user, or None when there
    was nothing left to revoke. Later segments move back by the time it no longer covers."""
    chat_id: int | None = await conn.fetchval(
        "SELECT chat_id FROM subscriptions WHERE order_id = $1", order_id
    )
    if chat_id is None:
        return None
    await _lock_user(conn, chat_id)
    row = await conn.fetchrow(
        "UPDATE subscriptions SET revoked_at = $2, revoked_by = $3, revoke_reason = $4"
        " WHERE order_id = $1 AND revoked_at IS NULL RETURNING starts_at, expires_at",
        order_id,
        now,
        by,
        reason[:500],
    )
    if row is None:
        return None
    starts, expires = row["starts_at"], row["expires_at"]
    if not is_lifetime(expires) and expires > now:
        shift = expires - max(starts, now)
        await conn.execute(
            "UPDATE subscriptions SET starts_at = starts_at - $3::interval,"
            " expires_at = expires_at - $3::interval"
            " WHERE chat_id = $1 AND revoked_at IS NULL AND starts_at >= $2",
            chat_id,
            expires,
            shift,
        )
    log.info("subscription.revoked", chat_id=chat_id, order_id=str(order_id), reason=reason)
    return chat_id


async def revoke_all(
    conn: Conn, chat_id: int, *, now: datetime, by: int | None, reason: str
) -> int:
    """End every running and future segment of the user now; returns how many."""
    await _lock_user(conn, chat_id)
    result: str = await conn.execute(
        "UPDATE subscriptions SET revoked_at = $2, revoked_by = $3, revoke_reason = $4"
        " WHERE chat_id = $1 AND revoked_at IS NULL AND expires_at > $2",
        chat_id,
        now,
        by,
        reason[:500],
    )
    count = int(result.split()[-1])
    log.info("subscription.revoked_all", chat_id=chat_id, segments=count, by=by)
    return count


async def status(conn: Conn | asyncpg.Pool, chat_id: int, now: datetime) -> SubscriptionInfo:
    """The user's subscription at `now`: the running segment's plan, the chain's end."""
    row = await conn.fetchrow(
        """
        SELECT
          (SELECT plan FROM subscriptions WHERE chat_id = $1 AND revoked_at IS NULL
             AND starts_at <= $2 AND expires_at > $2 ORDER BY expires_at DESC LIMIT 1) AS plan,
          (SELECT max(expires_at) FROM subscriptions WHERE chat_id = $1
             AND revoked_at IS NULL) AS last_expiry,
          (SELECT plan FROM subscriptions WHERE chat_id = $1 AND revoked_at IS NULL
             ORDER BY expires_at DESC LIMIT 1) AS last_plan
        """,
        chat_id,
        now,
    )
    assert row is not None
    plan, last_expiry = row["plan"], row["last_expiry"]
    if plan is None:
        return SubscriptionInfo(
            user_id=chat_id,
            active=False,
            plan=row["last_plan"],
            expires_at=last_expiry if last_expiry is not None and last_expiry <= now else None,
            as_of=now,
        )
    lifetime = is_lifetime(last_expiry)
    return SubscriptionInfo(
        user_id=chat_id,
        active=True,
        plan=plan,
        expires_at=None if lifetime else last_expiry,
        lifetime=lifetime,
        as_of=now,
    )


async def is_active(conn: Conn | asyncpg.Pool, chat_id: int, now: datetime) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM subscriptions WHERE chat_id = $1 AND revoked_at IS NULL"
        " AND starts_at <= $2 AND expires_at > $2 LIMIT 1",
        chat_id,
        now,
    )
    return found is not None


async def due_reminders(
    conn: Conn | asyncpg.Pool, now: datetime, lead: timedelta
) -> list[tuple[int, datetime]]:
    """Users whose subscription chain ends within `lead` from now: (chat_id, end)."""
    rows = await conn.fetch(
        """
        SELECT s.chat_id, s.expires_at FROM subscriptions s
        WHERE s.revoked_at IS NULL AND s.expires_at > $1 AND s.expires_at <= $2
          AND NOT EXISTS (SELECT 1 FROM subscriptions later WHERE later.chat_id = s.chat_id
                          AND later.revoked_at IS NULL AND later.expires_at > s.expires_at)
        """,
        now,
        now + lead,
    )
    return sorted({(r["chat_id"], r["expires_at"]) for r in rows})


async def recently_expired(
    conn: Conn | asyncpg.Pool, now: datetime, lookback: timedelta
) -> list[tuple[int, datetime]]:
    """Users whose whole chain ended in (now - lookback, now]: (chat_id, end)."""
    rows = await conn.fetch(
        """
        SELECT s.chat_id, s.expires_at FROM subscriptions s
        WHERE s.revoked_at IS NULL AND s.expires_at > $2 AND s.expires_at <= $1
          AND NOT EXISTS (SELECT 1 FROM subscriptions later WHERE later.chat_id = s.chat_id
                          AND later.revoked_at IS NULL AND later.expires_at > s.expires_at)
        """,
        now,
        now - lookback,
    )
    return sorted({(r["chat_id"], r["expires_at"]) for r in rows})


# -- the Redis cache and the user's actor --------------------------------------------------


def _cache_ttl(info: SubscriptionInfo, now: datetime) -> int:
    if not info.active:
        return _CACHE_INACTIVE_TTL
    if info.lifetime or info.expires_at is None:
        return _CACHE_MAX_TTL
    left = (info.expires_at - now).total_seconds()
    return max(1, min(_CACHE_MAX_TTL, math.ceil(left)))


async def cache_status(store: StoreHandle, info: SubscriptionInfo, now: datetime) -> None:
    """Write the cache entry; a Redis outage is logged, never raised (PG is the truth)."""
    try:
        await store.redis().set(
            f"{CACHE_PREFIX}{info.user_id}",
            msgspec.json.encode(info),
            ex=_cache_ttl(info, now),
        )
    except _REDIS_ERRORS as exc:
        log.warning("subscription.cache_failed", chat_id=info.user_id, error=type(exc).__name__)


def _still_true(info: SubscriptionInfo, now: datetime) -> SubscriptionInfo:
    if info.active and not info.lifetime and info.expires_at is not None and info.expires_at <= now:
        return msgspec.structs.replace(info, active=False, as_of=now)
    return msgspec.structs.replace(info, as_of=now)


async def cached_status(store: StoreHandle, chat_id: int, now: datetime) -> SubscriptionInfo:
    """The user's subscription from the Redis cache, else from PostgreSQL (then cached).

    For the user actors: cheap enough to call on every start and every `SubscriptionChanged`.
    An entry past its expiry reads as inactive even before Redis drops it.
    """
    raw: Any = None
    try:
        raw = await store.redis().get(f"{CACHE_PREFIX}{chat_id}")
    except _REDIS_ERRORS:
        raw = None
    if raw is not None:
        try:
            return _still_true(msgspec.json.decode(raw, type=SubscriptionInfo), now)
        except msgspec.ValidationError:
            pass
    info = await status(store.pool(), chat_id, now)
    await cache_status(store, info, now)
    return info


def tell_user(ctx: Context, chat_id: int) -> bool:
    """Tell `user:<chat_id>` its subscription changed, if that actor is running."""
    ref = ctx.system.registry.get(f"user:{chat_id}")
    if ref is None:
        return False
    return ref.tell_nowait(SubscriptionChanged(chat_id))


async def publish(
    ctx: Context, store: StoreHandle, chat_id: int, now: datetime
) -> SubscriptionInfo:
    """After a committed change: read the truth, cache it, tell the user's actor."""
    info = await status(store.pool(), chat_id, now)
    await cache_status(store, info, now)
    tell_user(ctx, chat_id)
    return info
