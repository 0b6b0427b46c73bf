"""Storage of the users flow: PostgreSQL rows and Redis keys, as plain async functions.

PostgreSQL is the source of truth for users, settings (current row plus the history in
``settings_changes``), subscriptions and presets; Redis caches settings for restarts and
holds the processed-token memory. Times are Unix seconds from the caller's clock (never
the database's ``now()``), so a test's `ManualClock` decides what "expired" means.

Every function raises `StoreUnavailable` (or the driver's error) and leaves it to the
actor to answer the user with `Unavailable`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import redis.exceptions
import structlog

from actors.store.handle import StoreUnavailable
from messages.filters import (
    DEFAULT_PRESETS,
    FilterError,
    FilterSettings,
    Preset,
    decode_settings,
    encode_settings,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "STORE_ERRORS",
    "UserRecord",
    "cache_settings",
    "cached_settings",
    "covered_until",
    "load_presets",
    "load_user",
    "load_users",
    "notified_key",
    "register_user",
    "save_settings",
    "set_reachable",
    "settings_key",
    "to_ts",
    "to_wall",
]

log = structlog.get_logger(__name__)

STORE_ERRORS: Final = (
    StoreUnavailable,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    redis.exceptions.RedisError,
    OSError,
    TimeoutError,
)
"""What a store call may raise when a server is down or slow: answered, never a crash."""

SETTINGS_CACHE_TTL: Final = 7 * 24 * 3600


def settings_key(chat_id: int) -> str:
    return f"cw:user:{chat_id}:settings"


def notified_key(token_key: str) -> str:
    """Sorted set of the users told about a token: member chat id, score when that claim
    expires (written by the notify gate's claim script, which builds the same name)."""
    return f"cw:token:{token_key}:notified"


def to_ts(value: dt.datetime) -> float:
    return value.timestamp()


def to_wall(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What a user actor starts from."""

    chat_id: int
    settings: FilterSettings = field(default_factory=FilterSettings)
    settings_version: int = 0
    reachable: bool = True
    locked: bool = False
    subscribed_until: float | None = None
    """End of the subscription covering now (renewals that follow on are joined)."""
    username: str | None = None

    def subscribed(self, now: float) -> bool:
        return self.subscribed_until is not None and self.subscribed_until > now

    def with_settings(self, settings: FilterSettings, version: int) -> UserRecord:
        return replace(self, settings=settings, settings_version=version)


def covered_until(periods: Iterable[tuple[float, float]], now: float) -> float | None:
    """End of the run of (start, end) periods that covers ``now``, None if none does.

    Back-to-back or overlapping periods join, so a renewal that starts when the current
    subscription ends keeps the user subscribed without a gap.
    """
    end: float | None = None
    for start, stop in sorted(periods):
        if stop <= now:
            continue
        if end is None:
            if start > now:
                break
            end = stop
        elif start <= end:
            end = max(end, stop)
        else:
            break
    return end


def _decode_filters(chat_id: int, raw: object) -> FilterSettings:
    if raw is None:
        return FilterSettings()
    try:
        return decode_settings(raw if isinstance(raw, str | bytes) else str(raw))
    except FilterError as exc:
        log.warning("stored_settings_invalid", chat_id=chat_id, error=exc.message)
        return FilterSettings()


_USERS_SQL: Final = """
SELECT u.chat_id, u.username, u.active, u.locked, s.filters, COALESCE(s.version, 0) AS version
FROM users u LEFT JOIN settings s ON s.chat_id = u.chat_id
"""
_SUBS_SQL: Final = """
SELECT chat_id, starts_at, expires_at FROM subscriptions
WHERE revoked_at IS NULL AND expires_at > $1
"""


async def load_users(
    pool: asyncpg.Pool, now: float, *, reachable_only: bool = True
) -> list[UserRecord]:
    """Every user (by default only those reachable and not locked), with settings and
    subscription state, in two queries."""
    where = " WHERE u.active AND NOT u.locked" if reachable_only else ""
    async with pool.acquire() as conn:
        rows = await conn.fetch(_USERS_SQL + where)
        subs = await conn.fetch(_SUBS_SQL, to_wall(now))
    periods: dict[int, list[tuple[float, float]]] = {}
    for sub in subs:
        periods.setdefault(sub["chat_id"], []).append(
            (to_ts(sub["starts_at"]), to_ts(sub["expires_at"]))
        )
    return [_record(row, periods.get(row["chat_id"], ()), now) for row in rows]


def _record(row: Any, periods: Iterable[tuple[float, float]], now: float) -> UserRecord:
    chat_id = int(row["chat_id"])
    return UserRecord(
        chat_id=chat_id,
        settings=_decode_filters(chat_id, row["filters"]),
        settings_version=int(row["version"]),
        reachable=bool(row["active"]),
        locked=bool(row["locked"]),
        subscribed_until=covered_until(periods, now),
        username=row["username"],
    )


async def load_user(pool: asyncpg.Pool, chat_id: int, now: float) -> UserRecord | None:
    """One user as `load_users` sees them (whatever their state), None if unknown."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(_USERS_SQL + " WHERE u.chat_id = $1", chat_id)
        if row is None:
            return None
        subs = await conn.fetch(_SUBS_SQL + " AND chat_id = $2", to_wall(now), chat_id)
    periods = [(to_ts(s["starts_at"]), to_ts(s["expires_at"])) for s in subs]
    return _record(row, periods, now)


async def register_user(
    pool: asyncpg.Pool,
    chat_id: int,
    username: str | None,
    first_name: str | None,
    now: float,
) -> tuple[UserRecord, bool]:
    """Create the user (with default settings) or mark them reachable again.

    Returns the record and whether the user was created.
    """
    username = username[:64] if username else None
    first_name = first_name[:256] if first_name else None
    async with pool.acquire() as conn, conn.transaction():
        created = await conn.fetchval(
            """
            INSERT INTO users (chat_id, username, first_name, created_at, last_seen)
            VALUES ($1, $2, $3, $4, $4)
            ON CONFLICT (chat_id) DO UPDATE
                SET active = true, last_seen = EXCLUDED.last_seen,
                    username = COALESCE(EXCLUDED.username, users.username),
                    first_name = COALESCE(EXCLUDED.first_name, users.first_name)
            RETURNING (xmax = 0)
            """,
            chat_id,
            username,
            first_name,
            to_wall(now),
        )
        await conn.execute(
            "INSERT INTO settings (chat_id, filters, version, updated_at) "
            "VALUES ($1, $2::jsonb, 1, $3) ON CONFLICT (chat_id) DO NOTHING",
            chat_id,
            encode_settings(FilterSettings()).decode(),
            to_wall(now),
        )
    record = await load_user(pool, chat_id, now)
    assert record is not None
    return record, bool(created)


async def save_settings(
    pool: asyncpg.Pool,
    chat_id: int,
    before: FilterSettings,
    after: FilterSettings,
    now: float,
    changed_by: int | None = None,
) -> int:
    """Write the current settings and their history row in one transaction; new version."""
    after_json = encode_settings(after).decode()
    async with pool.acquire() as conn, conn.transaction():
        version: int = await conn.fetchval(
            """
            INSERT INTO settings (chat_id, filters, version, updated_at)
            VALUES ($1, $2::jsonb, 1, $3)
            ON CONFLICT (chat_id) DO UPDATE
                SET filters = EXCLUDED.filters, version = settings.version + 1,
                    updated_at = EXCLUDED.updated_at
            RETURNING version
            """,
            chat_id,
            after_json,
            to_wall(now),
        )
        await conn.execute(
            """
            INSERT INTO settings_changes (dedup_key, chat_id, changed_by, before, after, changed_at)
            VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6) ON CONFLICT (dedup_key) DO NOTHING
            """,
            f"settings:{chat_id}:{version}",
            chat_id,
            changed_by if changed_by is not None else chat_id,
            encode_settings(before).decode(),
            after_json,
            to_wall(now),
        )
    return version


async def set_reachable(pool: asyncpg.Pool, chat_id: int, reachable: bool) -> None:
    await pool.execute("UPDATE users SET active = $2 WHERE chat_id = $1", chat_id, reachable)


async def cache_settings(
    client: aioredis.Redis, chat_id: int, settings: FilterSettings, version: int
) -> None:
    payload = b"%d " % version + encode_settings(settings)
    await client.set(settings_key(chat_id), payload, ex=SETTINGS_CACHE_TTL)


async def cached_settings(
    client: aioredis.Redis, chat_id: int
) -> tuple[FilterSettings, int] | None:
    raw = await client.get(settings_key(chat_id))
    if not raw:
        return None
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    version, _, body = data.partition(b" ")
    try:
        return decode_settings(body), int(version)
    except (FilterError, ValueError):
        return None


async def load_presets(pool: asyncpg.Pool | None) -> tuple[Preset, ...]:
    """The shipped presets, overridden and extended by the admins' presets in PostgreSQL.

    Rows that no longer validate are skipped with a warning (one bad row must not hide
    the others). Without a pool, the shipped presets.
    """
    presets: dict[str, Preset] = {p.name: p for p in DEFAULT_PRESETS}
    if pool is None:
        return tuple(presets.values())
    rows: Sequence[Any] = await pool.fetch(
        "SELECT name, description, filters FROM presets ORDER BY id"
    )
    for row in rows:
        try:
            preset = Preset(
                name=str(row["name"]).strip().lower(),
                description=row["description"] or "",
                settings=decode_settings(row["filters"]),
            )
        except FilterError as exc:
            log.warning("stored_preset_invalid", name=row["name"], error=exc.message)
            continue
        presets[preset.name] = preset
    return tuple(presets.values())
