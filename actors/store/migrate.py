"""Numbered SQL migrations, applied in order, each in its own transaction.

Files are ``NNNN_name.sql`` in :data:`MIGRATIONS_DIR`. Each one runs in a transaction together
with its row in ``schema_migrations``, so a failing file rolls back completely and leaves the
database at the previous version. A session-level advisory lock serializes migrators: two
processes starting at once apply each file exactly once. The checksum of every applied file is
recorded; editing a file after it was applied is refused, because the databases that already
ran it would silently differ from those that run the new text.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

import anyio
import asyncpg
import structlog

__all__ = [
    "MIGRATIONS_DIR",
    "AppliedMigration",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "load_migrations",
    "migrate",
    "status",
]

log = structlog.get_logger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).parent / "migrations"
# pg_advisory_lock key: the first 8 bytes of sha256("callwatch.schema_migrations"), signed.
LOCK_KEY: Final = int.from_bytes(
    hashlib.sha256(b"callwatch.schema_migrations").digest()[:8], "big", signed=True
)
_FILE_RE: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY CHECK (version > 0),
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer NOT NULL DEFAULT 0
)
"""


class MigrationError(Exception):
    """A migration could not be applied (or the migrations themselves are inconsistent)."""

    def __init__(self, message: str, *, filename: str | None = None) -> None:
        super().__init__(message)
        self.filename = filename


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    current: int
    """Highest applied version (0 for an empty database)."""
    latest: int
    """Highest version among the files."""
    applied: tuple[AppliedMigration, ...]
    pending: tuple[Migration, ...]
    modified: tuple[int, ...]
    """Applied versions whose file changed since (``migrate`` refuses to run then)."""
    unknown: tuple[int, ...]
    """Applied versions with no file here (a newer callwatch migrated this database)."""

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.modified


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; refuses stray names and duplicate versions."""
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name!r} is not named NNNN_lowercase_name.sql",
                filename=path.name,
            )
        version = int(match.group(1))
        if version == 0:
            raise MigrationError("migration versions start at 0001", filename=path.name)
        if version in migrations:
            raise MigrationError(
                f"migration version {version} appears twice: "
                f"{migrations[version].filename} and {path.name}",
                filename=path.name,
            )
        migrations[version] = Migration(version, match.group(2), path, path.read_text())
    return [migrations[v] for v in sorted(migrations)]


async def _applied(conn: asyncpg.Connection) -> list[AppliedMigration]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch(
        "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
    )
    return [AppliedMigration(r["version"], r["name"], r["checksum"], r["applied_at"]) for r in rows]


def _status(files: list[Migration], applied: list[AppliedMigration]) -> MigrationStatus:
    by_version = {m.version: m for m in files}
    done = {a.version: a for a in applied}
    return MigrationStatus(
        current=max(done, default=0),
        latest=max(by_version, default=0),
        applied=tuple(applied),
        pending=tuple(m for m in files if m.version not in done),
        modified=tuple(
            v for v, a in done.items() if v in by_version and by_version[v].checksum != a.checksum
        ),
        unknown=tuple(v for v in done if v not in by_version),
    )


async def status(conn: asyncpg.Connection, *, directory: Path = MIGRATIONS_DIR) -> MigrationStatus:
    """Where this database stands against the migration files (reads only)."""
    return _status(load_migrations(directory), await _applied(conn))


async def _lock(conn: asyncpg.Connection, patience: float) -> None:
    deadline = time.monotonic() + patience
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"another process has held the migration lock for over {patience:g} s"
            )
        await anyio.sleep(0.05)


async def migrate(
    conn: asyncpg.Connection,
    *,
    directory: Path = MIGRATIONS_DIR,
    lock_timeout: float = 60.0,
) -> list[int]:
    """Apply the pending migrations in order; return the versions applied (empty: no-op).

    Raises :class:`MigrationError` naming the file when one fails: that file is rolled back,
    the ones before it stay applied.
    """
    files = load_migrations(directory)
    await _lock(conn, lock_timeout)
    try:
        await conn.execute(_CREATE_TABLE)
        state = _status(files, await _applied(conn))
        if state.modified:
            names = ", ".join(m.filename for m in files if m.version in state.modified)
            raise MigrationError(
                f"applied migrations were edited afterwards: {names}; "
                "restore them and put the change in a new migration",
                filename=names,
            )
        if state.unknown:
            log.warning("schema_newer_than_code", unknown_versions=list(state.unknown))
        applied: list[int] = []
        for migration in state.pending:
            await _apply(conn, migration)
            applied.append(migration.version)
        return applied
    finally:
        # A broken connection has dropped the lock with its session already.
        if not conn.is_closed():
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def _apply(conn: asyncpg.Connection, migration: Migration) -> None:
    began = time.monotonic()
    try:
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, duration_ms) "
                "VALUES ($1, $2, $3, $4)",
                migration.version,
                migration.name,
                migration.checksum,
                int((time.monotonic() - began) * 1000),
            )
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise MigrationError(
            f"migration {migration.filename} failed and was rolled back: "
            f"{type(exc).__name__}: {exc}",
            filename=migration.filename,
        ) from exc
    log.info(
        "migration_applied",
        version=migration.version,
        file=migration.filename,
        ms=round((time.monotonic() - began) * 1000, 1),
    )
